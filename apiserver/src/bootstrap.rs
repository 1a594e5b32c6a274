//! etcd users and roles from the operator's `users.yaml`, then auth on.
//!
//! Roles: `knit-readwrite` (read/write `knit/v1/`), `knit-readall` (read
//! `knit/v1/`, write `knit/v1/agent-status/` where agents report),
//! `knit-remote` (read this cluster's own prefix and the
//! heartbeat only). Users authenticate by client-certificate CN. The local
//! writer also holds etcd's `root` role, so it can run this again after auth
//! is on (to add or remove peers). Users no longer listed are deleted, so a
//! removed peer loses access at once. Idempotent.

use etcd_client::{Client, Permission, UserAddOptions};
use knit_kvstore::keys::{HEARTBEAT_KEY, KEY_PREFIX, agent_status_prefix, cluster_prefix};
use knit_kvstore::{Access, EtcdAccess};

use crate::{Error, Result};

const ROLE_READWRITE: &str = "knit-readwrite";
const ROLE_READALL: &str = "knit-readall";
const ROLE_REMOTE: &str = "knit-remote";

/// Brings etcd's users and roles to `access` and enables auth.
pub async fn bootstrap(client: &mut Client, access: &EtcdAccess) -> Result<()> {
    let all = format!("{KEY_PREFIX}/");
    let own = cluster_prefix(&access.cluster_name);
    let roles = [
        (
            ROLE_READWRITE,
            vec![Permission::read_write(all.as_str()).with_prefix()],
        ),
        (
            ROLE_READALL,
            vec![
                Permission::read(all.as_str()).with_prefix(),
                // Each agent reports its view of the peers here.
                Permission::read_write(agent_status_prefix().as_str()).with_prefix(),
            ],
        ),
        (
            ROLE_REMOTE,
            vec![
                Permission::read(own.as_str()).with_prefix(),
                Permission::read(HEARTBEAT_KEY),
            ],
        ),
    ];
    let existing_roles = client
        .role_list()
        .await
        .map_err(etcd("listing roles"))?
        .roles()
        .to_vec();
    for (role, permissions) in roles {
        if !existing_roles.iter().any(|r| r == role) {
            client.role_add(role).await.map_err(etcd("adding role"))?;
        }
        for permission in permissions {
            client
                .role_grant_permission(role, permission)
                .await
                .map_err(etcd("granting permission"))?;
        }
    }

    let existing_users = client
        .user_list()
        .await
        .map_err(etcd("listing users"))?
        .users()
        .to_vec();
    let mut wanted: Vec<(&str, &str)> = access
        .users
        .iter()
        .map(|u| {
            let role = match u.access {
                Access::ReadWrite => ROLE_READWRITE,
                Access::ReadAll => ROLE_READALL,
                Access::ReadOwnCluster => ROLE_REMOTE,
            };
            (u.name.as_str(), role)
        })
        .collect();
    wanted.push(("root", "root"));
    for (user, role) in &wanted {
        if !existing_users.iter().any(|u| u == user) {
            client
                .user_add(*user, "", Some(UserAddOptions::new().with_no_pwd()))
                .await
                .map_err(etcd("adding user"))?;
        }
        client
            .user_grant_role(*user, *role)
            .await
            .map_err(etcd("granting role"))?;
    }
    for writer in access.users.iter().filter(|u| u.access == Access::ReadWrite) {
        client
            .user_grant_role(writer.name.as_str(), "root")
            .await
            .map_err(etcd("granting root role"))?;
    }
    for user in existing_users
        .iter()
        .filter(|u| !wanted.iter().any(|(w, _)| w == u))
    {
        tracing::info!(%user, "removing etcd user no longer in users.yaml");
        client
            .user_delete(user.as_str())
            .await
            .map_err(etcd("deleting user"))?;
    }
    client.auth_enable().await.map_err(etcd("enabling auth"))?;
    Ok(())
}

fn etcd(action: &'static str) -> impl Fn(etcd_client::Error) -> Error {
    move |source| Error::Etcd {
        action: action.into(),
        source,
    }
}
