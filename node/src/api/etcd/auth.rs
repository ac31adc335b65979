//! etcd's `Auth` service: sign in (Authenticate), users, roles and their permissions, and the
//! auth switch, so `etcdctl user|role|auth` work. Every change goes through Raft as a
//! [`Command::Auth`], its password already hashed; every change and every listing needs the
//! root role once auth is on.

use std::sync::Arc;

use concord_proto::etcd::authpb;
use concord_proto::etcd::etcdserverpb as pb;
use concord_proto::etcd::etcdserverpb::auth_server::Auth;
use tonic::{Request, Response, Status};

use super::{header, service_status};
use crate::app::App;
use crate::auth::{self, AuthCommand, AuthError, Caller, PermType, Permission, Refusal, ROOT};
use crate::store::{Command, CommandResult};

pub struct AuthService {
    pub app: Arc<App>,
}

/// etcd's status for an auth change refused (`api/v3rpc/rpctypes`; clients match on the
/// messages).
pub fn auth_status(e: &AuthError) -> Status {
    match e {
        AuthError::UserEmpty | AuthError::RoleEmpty => Status::invalid_argument(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

/// etcd's answer to a failed sign-in: the same whether the user or the password was wrong.
fn auth_failed() -> Status {
    Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")
}

impl AuthService {
    fn revision(&self) -> u64 {
        self.app.state.read().kv.revision()
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(header(&self.app, self.revision()))
    }

    /// Refuses a caller without the root role (anyone, while auth is off).
    fn root_only(&self) -> Result<(), Status> {
        let state = self.app.state.read();
        auth::caller(&state.auth)
            .and_then(|c| c.check_root(&state.auth))
            .map_err(|r| refused(&r))
    }

    async fn change(&self, cmd: AuthCommand) -> Result<(), Status> {
        self.root_only()?;
        let what = cmd.name();
        let written = self
            .app
            .write(Command::Auth(cmd))
            .await
            .map_err(|e| service_status(&e))?;
        match written.result {
            CommandResult::Auth(Ok(())) => {
                tracing::info!(change = what, "auth changed");
                Ok(())
            }
            CommandResult::Auth(Err(e)) => Err(auth_status(&e)),
            other => Err(Status::internal(format!(
                "an auth change produced {other:?}"
            ))),
        }
    }
}

/// The status for a refused request, counted.
pub fn refused(r: &Refusal) -> Status {
    r.count();
    r.grpc()
}

/// Hashes a password off the runtime's threads (argon2 takes tens of milliseconds on
/// purpose). An empty password means none, as etcd's `--no-password`.
async fn hashed(
    password: String,
    pre_hashed: &str,
    no_password: bool,
) -> Result<Option<String>, Status> {
    if no_password {
        return Ok(None);
    }
    if password.is_empty() && !pre_hashed.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: pre-hashed (bcrypt) passwords are not accepted: ConcordKV hashes with argon2id; send the password itself (over TLS)",
        ));
    }
    if password.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: a password is required (or the no-password option)",
        ));
    }
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| Status::internal(format!("hashing task: {e}")))?
        .map(Some)
        .map_err(Status::internal)
}

fn perm_type(p: i32) -> Result<PermType, Status> {
    match authpb::permission::Type::try_from(p) {
        Ok(authpb::permission::Type::Read) => Ok(PermType::Read),
        Ok(authpb::permission::Type::Write) => Ok(PermType::Write),
        Ok(authpb::permission::Type::Readwrite) => Ok(PermType::ReadWrite),
        Err(_) => Err(Status::invalid_argument(format!(
            "etcdserver: unknown permission type {p}"
        ))),
    }
}

fn perm_out(p: &Permission) -> authpb::Permission {
    let t = match p.perm {
        PermType::Read => authpb::permission::Type::Read,
        PermType::Write => authpb::permission::Type::Write,
        PermType::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission {
        perm_type: t as i32,
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        _req: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let token_key = rand::random::<[u8; 32]>().to_vec();
        self.change(AuthCommand::Enable { token_key }).await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        _req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.change(AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        _req: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let (enabled, auth_revision) = {
            let s = self.app.state.read();
            (s.auth.enabled(), s.auth.revision())
        };
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        use crate::auth::sign_in::{sign_in, SignInError};
        let pb::AuthenticateRequest { name, password } = req.into_inner();
        let token = sign_in(&self.app, &name, password, auth::source())
            .await
            .map_err(|e| match e {
                SignInError::NotEnabled => Status::failed_precondition(e.to_string()),
                SignInError::Failed => auth_failed(),
                SignInError::TooMany => Status::resource_exhausted(e.to_string()),
                SignInError::Internal(m) => Status::internal(m),
            })?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        // Before hashing, not only in `change`: a refused caller must not cost a KDF run.
        self.root_only()?;
        let req = req.into_inner();
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password_hash = hashed(req.password, &req.hashed_password, no_password).await?;
        self.change(AuthCommand::UserAdd {
            name: req.name,
            password_hash,
        })
        .await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let name = req.into_inner().name;
        // A user may read their own roles; anyone else's takes root.
        let own = {
            let s = self.app.state.read();
            matches!(auth::caller(&s.auth), Ok(Caller::User(u)) if u == name)
        };
        if !own {
            self.root_only()?;
        }
        let roles = {
            let s = self.app.state.read();
            let user = s
                .auth
                .user(&name)
                .ok_or_else(|| auth_status(&AuthError::UserNotFound))?;
            user.roles.iter().cloned().collect()
        };
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        _req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.root_only()?;
        let users = self
            .app
            .state
            .read()
            .auth
            .users()
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.change(AuthCommand::UserDelete {
            name: req.into_inner().name,
        })
        .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.root_only()?;
        let req = req.into_inner();
        let password_hash = hashed(req.password, &req.hashed_password, false).await?;
        self.change(AuthCommand::UserChangePassword {
            name: req.name,
            password_hash,
        })
        .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let req = req.into_inner();
        self.change(AuthCommand::UserGrantRole {
            user: req.user,
            role: req.role,
        })
        .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let req = req.into_inner();
        self.change(AuthCommand::UserRevokeRole {
            user: req.name,
            role: req.role,
        })
        .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.change(AuthCommand::RoleAdd {
            name: req.into_inner().name,
        })
        .await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        self.root_only()?;
        let name = req.into_inner().role;
        let perm = {
            let s = self.app.state.read();
            let role = s
                .auth
                .role(&name)
                .ok_or_else(|| auth_status(&AuthError::RoleNotFound))?;
            // The root role is every key; etcd shows it without permissions too.
            role.permissions.iter().map(perm_out).collect()
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        _req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.root_only()?;
        let roles = self
            .app
            .state
            .read()
            .auth
            .roles()
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.change(AuthCommand::RoleDelete {
            name: req.into_inner().role,
        })
        .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let req = req.into_inner();
        let p = req
            .perm
            .ok_or_else(|| Status::invalid_argument("etcdserver: permission is empty"))?;
        if p.key.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: permission key is empty",
            ));
        }
        let permission = Permission {
            perm: perm_type(p.perm_type)?,
            key: p.key,
            range_end: p.range_end,
        };
        if req.name == ROOT {
            // Root may do everything already; etcd accepts the grant and it changes nothing.
            tracing::debug!("a permission granted to the root role");
        }
        self.change(AuthCommand::RoleGrantPermission {
            role: req.name,
            permission,
        })
        .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let req = req.into_inner();
        self.change(AuthCommand::RoleRevokePermission {
            role: req.role,
            key: req.key,
            range_end: req.range_end,
        })
        .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
