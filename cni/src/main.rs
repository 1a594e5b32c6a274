//! `knit-cni`: the CNI plugin binary. The runtime sets `CNI_*` and writes
//! the network config to stdin; the answer goes to stdout, errors as CNI
//! error JSON with exit code 1 (see [`knit_cni::plugin`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use knit_cni::links::NodeLinks;
use knit_cni::plugin;
use knit_cni::protocol::{CniError, ErrorCode, Invocation};

fn main() {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let inv = Invocation::from_env(&env);
    let mut stdin = Vec::new();
    let outcome = if inv.command == "VERSION" {
        Ok(plugin::version())
    } else {
        match std::io::stdin().read_to_end(&mut stdin) {
            Ok(_) => plugin::run(&inv, &stdin, &NodeLinks),
            Err(e) => Err(
                CniError::new(ErrorCode::Io, "reading the network config from stdin failed")
                    .with_details(e.to_string()),
            ),
        }
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(text) => {
            let _ = out.write_all(text.as_bytes());
        }
        Err(e) => {
            let _ = out.write_all(serde_json::to_string(&e).expect("an error serialises").as_bytes());
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}
