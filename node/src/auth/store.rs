//! Users, roles and their permissions: etcd's auth model, replicated like the key space (every
//! member applies the same [`AuthCommand`]s in the same order) and consulted locally on every
//! request. Pure data: no I/O, no clock, no hashing (passwords arrive hashed: the log and the
//! snapshots never hold one in clear).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::store::mvcc::KeyRange;

/// The role that may do everything: membership, compaction, snapshots, user management, and
/// every key.
pub const ROOT: &str = "root";

/// What a permission lets a role do to its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PermType {
    Read,
    Write,
    ReadWrite,
}

impl PermType {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermType::ReadWrite, _)
                | (PermType::Read, Access::Read)
                | (PermType::Write, Access::Write)
        )
    }
}

/// What a request does to a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Keys as etcd's permissions name them: `key` alone, `[key, range_end)`, or every key from
/// `key` on (`range_end` = `\0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Permission {
    pub perm: PermType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl Permission {
    fn range(&self) -> KeyRange {
        KeyRange::from_etcd(self.key.clone(), self.range_end.clone())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The password's hash as a PHC string (argon2id); `None`: the user has no password and
    /// signs in only with a client certificate (etcd's `--no-password`).
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
}

/// A change to users, roles or the auth switch, exactly as stored in the Raft log. Variants
/// are only ever added at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Turns auth on. `token_key` (chosen at random by the member that proposed it) signs
    /// tokens from then on if no key was set before.
    Enable {
        token_key: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthCommand {
    /// What it is, for logs (never its secrets).
    pub fn name(&self) -> &'static str {
        match self {
            AuthCommand::Enable { .. } => "auth_enable",
            AuthCommand::Disable => "auth_disable",
            AuthCommand::UserAdd { .. } => "user_add",
            AuthCommand::UserDelete { .. } => "user_delete",
            AuthCommand::UserChangePassword { .. } => "user_change_password",
            AuthCommand::UserGrantRole { .. } => "user_grant_role",
            AuthCommand::UserRevokeRole { .. } => "user_revoke_role",
            AuthCommand::RoleAdd { .. } => "role_add",
            AuthCommand::RoleDelete { .. } => "role_delete",
            AuthCommand::RoleGrantPermission { .. } => "role_grant_permission",
            AuthCommand::RoleRevokePermission { .. } => "role_revoke_permission",
        }
    }
}

/// Why a change or a check was refused. The messages are etcd's: clients match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
}

/// The replicated auth state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStore {
    enabled: bool,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Bumped by every change that succeeds (etcd's auth revision).
    revision: u64,
    /// What tokens are signed with; set by the first enable.
    token_key: Vec<u8>,
}

impl AuthStore {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn token_key(&self) -> &[u8] {
        &self.token_key
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = (&String, &User)> {
        self.users.iter()
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn roles(&self) -> impl Iterator<Item = (&String, &Role)> {
        self.roles.iter()
    }

    /// Whether `user` holds the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` may `access` every key of `keys` (root: anything).
    pub fn permits(&self, user: &str, access: Access, keys: &KeyRange) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.contains(ROOT) {
            return true;
        }
        let granted: Vec<KeyRange> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.permissions)
            .filter(|p| p.perm.allows(access))
            .map(Permission::range)
            .collect();
        covered(keys, &granted)
    }

    /// Whether `user` may `access` this one key.
    pub fn permits_key(&self, user: &str, access: Access, key: &[u8]) -> bool {
        self.permits(user, access, &KeyRange::One(key.to_vec()))
    }

    /// Applies a change; on success the auth revision moves on.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<(), AuthError> {
        self.change(cmd)?;
        self.revision += 1;
        Ok(())
    }

    fn change(&mut self, cmd: &AuthCommand) -> Result<(), AuthError> {
        match cmd {
            AuthCommand::Enable { token_key } => {
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                if self.token_key.is_empty() {
                    self.token_key = token_key.clone();
                }
                self.enabled = true;
            }
            AuthCommand::Disable => self.enabled = false,
            AuthCommand::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                    },
                );
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let u = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                u.password_hash = password_hash.clone();
            }
            AuthCommand::UserGrantRole { user, role } => {
                if !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                u.roles.insert(role.clone());
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                // Granting the same keys again replaces the access (etcd's rule).
                match r
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end)
                {
                    Some(p) => p.perm = permission.perm,
                    None => r.permissions.push(permission.clone()),
                }
                r.permissions.sort();
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(&p.key == key && &p.range_end == range_end));
                if r.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        Ok(())
    }
}

/// Whether the ranges in `granted` together cover every key of `keys`.
fn covered(keys: &KeyRange, granted: &[KeyRange]) -> bool {
    // Walk from the range's first key: each step finds a granted range holding the current
    // key and moves to that range's end, until the asked range's end is passed.
    let (mut at, end): (Vec<u8>, Option<Vec<u8>>) = match keys {
        KeyRange::One(k) => return granted.iter().any(|g| g.contains(k)),
        KeyRange::Range { from, to } => {
            if from >= to {
                return true;
            }
            (from.clone(), Some(to.clone()))
        }
        KeyRange::From(k) => (k.clone(), None),
    };
    loop {
        // The granted range holding `at` that reaches furthest.
        let mut best: Option<Option<Vec<u8>>> = None;
        for g in granted.iter().filter(|g| g.contains(&at)) {
            let reach = match g {
                // A single key reaches just past itself.
                KeyRange::One(k) => Some(successor(k)),
                KeyRange::Range { to, .. } => Some(to.clone()),
                KeyRange::From(_) => None,
            };
            best = Some(match (best, reach) {
                (None, r) => r,
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
            });
        }
        match (best, &end) {
            (None, _) => return false,
            (Some(None), _) => return true,
            (Some(Some(reach)), Some(end)) if reach >= *end => return true,
            (Some(Some(reach)), _) => at = reach,
        }
    }
}

/// The smallest key after `k`.
fn successor(k: &[u8]) -> Vec<u8> {
    let mut s = k.to_vec();
    s.push(0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(perm: PermType, key: &str, range_end: &str) -> Permission {
        Permission {
            perm,
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
        }
    }

    fn store_with(perms: Vec<Permission>) -> AuthStore {
        let mut s = AuthStore::default();
        s.apply(&AuthCommand::RoleAdd { name: "r".into() }).unwrap();
        s.apply(&AuthCommand::UserAdd {
            name: "u".into(),
            password_hash: None,
        })
        .unwrap();
        s.apply(&AuthCommand::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        })
        .unwrap();
        for p in perms {
            s.apply(&AuthCommand::RoleGrantPermission {
                role: "r".into(),
                permission: p,
            })
            .unwrap();
        }
        s
    }

    #[test]
    fn prefix_permissions_hold_at_their_boundaries() {
        // etcdctl role grant-permission r readwrite app/ --prefix: [app/, app0).
        let s = store_with(vec![perm(PermType::ReadWrite, "app/", "app0")]);
        let one = |k: &str| KeyRange::One(k.as_bytes().to_vec());
        assert!(s.permits("u", Access::Write, &one("app/")));
        assert!(s.permits("u", Access::Write, &one("app/x")));
        assert!(s.permits("u", Access::Read, &KeyRange::prefix(b"app/")));
        assert!(s.permits("u", Access::Read, &KeyRange::prefix(b"app/sub/")));
        // Just outside on either side.
        assert!(!s.permits("u", Access::Read, &one("app")));
        assert!(!s.permits("u", Access::Read, &one("app0")));
        assert!(!s.permits("u", Access::Read, &KeyRange::prefix(b"app")));
        assert!(!s.permits("u", Access::Read, &KeyRange::From(b"app/".to_vec())));
        assert!(!s.permits("u", Access::Read, &KeyRange::From(Vec::new())));
    }

    #[test]
    fn access_types_and_unions_of_ranges() {
        let s = store_with(vec![
            perm(PermType::Read, "a", "c"),
            perm(PermType::Read, "c", "e"),
            perm(PermType::Write, "x", ""),
            perm(PermType::Read, "z", "\0"),
        ]);
        let range = |a: &str, b: &str| KeyRange::Range {
            from: a.as_bytes().to_vec(),
            to: b.as_bytes().to_vec(),
        };
        // Two adjacent grants cover a range across both; a gap does not.
        assert!(s.permits("u", Access::Read, &range("b", "e")));
        assert!(!s.permits("u", Access::Read, &range("b", "f")));
        assert!(!s.permits("u", Access::Write, &range("a", "b")));
        // A single-key grant covers that key and nothing after it.
        assert!(s.permits("u", Access::Write, &KeyRange::One(b"x".to_vec())));
        assert!(!s.permits("u", Access::Read, &KeyRange::One(b"x".to_vec())));
        assert!(!s.permits("u", Access::Write, &range("x", "y")));
        // `\0`: every key from z on.
        assert!(s.permits("u", Access::Read, &KeyRange::From(b"zz".to_vec())));
        // Unknown users may do nothing; root may do anything.
        assert!(!s.permits("nobody", Access::Read, &KeyRange::One(b"a".to_vec())));
    }

    #[test]
    fn enabling_needs_a_root_user_with_the_root_role_and_protects_it() {
        let mut s = AuthStore::default();
        let enable = AuthCommand::Enable {
            token_key: vec![7; 32],
        };
        assert_eq!(s.apply(&enable), Err(AuthError::RootUserNotExist));
        s.apply(&AuthCommand::UserAdd {
            name: ROOT.into(),
            password_hash: Some("h".into()),
        })
        .unwrap();
        assert_eq!(s.apply(&enable), Err(AuthError::RootRoleNotExist));
        assert_eq!(
            s.apply(&AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into()
            }),
            Err(AuthError::RoleNotFound)
        );
        s.apply(&AuthCommand::RoleAdd { name: ROOT.into() })
            .unwrap();
        s.apply(&AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        })
        .unwrap();
        let revision = s.revision();
        s.apply(&enable).unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), revision + 1);
        assert!(s.permits(ROOT, Access::Write, &KeyRange::From(Vec::new())));
        // The key is kept across a second enable.
        s.apply(&AuthCommand::Enable {
            token_key: vec![9; 32],
        })
        .unwrap();
        assert_eq!(s.token_key(), &[7; 32][..]);
        // Root cannot be locked out while auth is on.
        for cmd in [
            AuthCommand::UserDelete { name: ROOT.into() },
            AuthCommand::RoleDelete { name: ROOT.into() },
            AuthCommand::UserRevokeRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
        ] {
            assert_eq!(s.apply(&cmd), Err(AuthError::InvalidAuthMgmt), "{cmd:?}");
        }
        // A refused change leaves the revision.
        assert_eq!(s.revision(), revision + 2);
    }

    #[test]
    fn deleting_a_role_takes_it_from_its_users_and_revoking_needs_a_grant() {
        let mut s = store_with(vec![perm(PermType::Read, "k", "")]);
        assert_eq!(
            s.apply(&AuthCommand::RoleRevokePermission {
                role: "r".into(),
                key: b"other".to_vec(),
                range_end: Vec::new()
            }),
            Err(AuthError::PermissionNotGranted)
        );
        s.apply(&AuthCommand::RoleDelete { name: "r".into() })
            .unwrap();
        assert!(s.user("u").unwrap().roles.is_empty());
        assert!(!s.permits_key("u", Access::Read, b"k"));
        assert_eq!(
            s.apply(&AuthCommand::UserRevokeRole {
                user: "u".into(),
                role: "r".into()
            }),
            Err(AuthError::RoleNotGranted)
        );
    }
}
