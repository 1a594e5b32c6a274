//! Line charts of benchmark figures, drawn with plotters into SVG: one
//! line per setup over a log-scaled x axis (the number of services), charts
//! stacked in one file. Pure apart from writing the file.

use std::path::Path;

use plotters::prelude::*;

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points; x must be positive (log scale).
    pub points: Vec<(f64, f64)>,
}

/// One chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Caption.
    pub title: String,
    /// What x is.
    pub x_label: String,
    /// What y is.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

/// Draws `charts` one above the other into the SVG file `path`; the error
/// says what failed.
pub fn write_svg(path: &Path, charts: &[Chart]) -> Result<(), String> {
    let height = 420 * u32::try_from(charts.len().max(1)).unwrap_or(1);
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| format!("drawing {}: {e}", path.display()))?;
    for (area, chart) in root.split_evenly((charts.len().max(1), 1)).iter().zip(charts) {
        draw(area, chart).map_err(|e| format!("drawing {:?}: {e}", chart.title))?;
    }
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let xs = chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.clone().fold(1.0f64, f64::max);
    let x_min = xs.fold(x_max, f64::min).max(f64::MIN_POSITIVE);
    let y_max = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut c = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((x_min..x_max * 1.5).log_scale(), 0.0..y_max * 1.15)?;
    c.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .draw()?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_drawn_with_its_legend() {
        let dir = knit_testkit::TempDir::new("chart");
        let path = dir.path().join("c.svg");
        let series = |name: &str, ys: [f64; 3]| Series {
            name: name.into(),
            points: [1.0, 1_000.0, 100_000.0].into_iter().zip(ys).collect(),
        };
        let charts = [
            Chart {
                title: "connections per second".into(),
                x_label: "services".into(),
                y_label: "conn/s".into(),
                series: vec![
                    series("knit VIP", [11_000.0, 10_900.0, 10_800.0]),
                    series("iptables DNAT", [10_000.0, 6_000.0, 900.0]),
                ],
            },
            Chart {
                title: "p99".into(),
                x_label: "services".into(),
                y_label: "us".into(),
                series: vec![series("knit VIP", [80.0, 82.0, 85.0])],
            },
        ];
        write_svg(&path, &charts).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in [
            "connections per second",
            "p99",
            "knit VIP",
            "iptables DNAT",
            "conn/s",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert_eq!(svg.matches("<circle").count(), 9, "a mark per point");
    }
}
