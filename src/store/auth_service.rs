//! The gRPC face of etcd's Auth API (`etcdserverpb.Auth`), the methods etcd
//! 3.4 has: enable and disable, `Authenticate` to a token, users, roles and
//! their key-range permissions. Every method but `Authenticate` needs the
//! `root` role once auth is on, and is refused to hosts' tunnels always.
//!
//! `etcd-client` generates this service's trait, but one of its methods
//! (`AuthStatus`, new in etcd 3.5) takes types the crate does not export, so
//! the trait cannot be implemented from outside. [`AuthApi`] routes the
//! service's paths itself instead, with tonic's unary machinery and the
//! exported message types; `AuthStatus` answers `Unimplemented`, as etcd 3.4
//! does.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use etcd_client::proto::*;
use etcd_client::{Permission, PermissionType};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service as TowerService};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::auth::{Perm, READ, WRITE};
use super::error::EtcdError;
use super::rights::Rights;
use super::service::Service;

type Res<T> = Result<Response<T>, Status>;

/// The Auth service, routed by path.
#[derive(Clone)]
pub(crate) struct AuthApi {
    store: Service,
    /// The largest request accepted, as for the generated servers.
    limit: usize,
}

impl AuthApi {
    pub fn new(store: Service, limit: usize) -> AuthApi {
        AuthApi { store, limit }
    }
}

impl NamedService for AuthApi {
    const NAME: &'static str = "etcdserverpb.Auth";
}

/// Serves one unary call of the Auth service with `handler`.
macro_rules! route {
    ($req:expr, $limit:expr, $store:expr, $method:ident) => {{
        let store = $store.clone();
        let handler = move |r| {
            let store = store.clone();
            async move { store.$method(r).await }
        };
        Box::pin(unary($req, $limit, handler)) as BoxFuture<http::Response<Body>, Infallible>
    }};
}

impl TowerService<http::Request<Body>> for AuthApi {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (s, n) = (&self.store, self.limit);
        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
        match method.as_str() {
            "AuthEnable" => route!(req, n, s, auth_enable),
            "AuthDisable" => route!(req, n, s, auth_disable),
            "Authenticate" => route!(req, n, s, authenticate),
            "UserAdd" => route!(req, n, s, user_add),
            "UserGet" => route!(req, n, s, user_get),
            "UserList" => route!(req, n, s, user_list),
            "UserDelete" => route!(req, n, s, user_delete),
            "UserChangePassword" => route!(req, n, s, user_change_password),
            "UserGrantRole" => route!(req, n, s, user_grant_role),
            "UserRevokeRole" => route!(req, n, s, user_revoke_role),
            "RoleAdd" => route!(req, n, s, role_add),
            "RoleGet" => route!(req, n, s, role_get),
            "RoleList" => route!(req, n, s, role_list),
            "RoleDelete" => route!(req, n, s, role_delete),
            "RoleGrantPermission" => route!(req, n, s, role_grant_permission),
            "RoleRevokePermission" => route!(req, n, s, role_revoke_permission),
            _ => {
                let msg = format!("unknown method {method} for service etcdserverpb.Auth");
                Box::pin(async move { Ok(Status::unimplemented(msg).into_http()) })
            }
        }
    }
}

async fn unary<Req, Resp, F, Fut>(
    req: http::Request<Body>,
    limit: usize,
    handler: F,
) -> Result<http::Response<Body>, Infallible>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send,
{
    let mut grpc = Grpc::new(ProstCodec::<Resp, Req>::default()).max_decoding_message_size(limit);
    Ok(grpc.unary(tower::service_fn(handler), req).await)
}

/// etcd's permission as `authpb.Permission`, through the public builder.
fn to_pb(p: Perm) -> Permission {
    let kind = match p.kind {
        READ => PermissionType::Read,
        WRITE => PermissionType::Write,
        _ => PermissionType::Readwrite,
    };
    Permission::new(kind, p.key).with_range_end(p.range_end)
}

impl Service {
    /// Runs `f` on the auth state for a caller allowed to manage it, counts
    /// a raft entry as etcd would (refusals included), and stamps the header.
    fn manage<T, R>(
        &self,
        req: &Request<T>,
        f: impl FnOnce(&mut super::auth::Auth) -> Result<R, EtcdError>,
    ) -> Result<(R, Option<PbResponseHeader>), Status> {
        let shared = self.shared();
        let out = Rights::of(shared, req)
            .and_then(|who| who.admin("manage users and roles"))
            .and_then(|()| f(&mut shared.auth()))
            .map_err(|e| self.refused_write(e))?;
        shared.counters.raft_index.fetch_add(1, Ordering::Relaxed);
        Ok((out, shared.header(shared.rev())))
    }

    async fn auth_enable(&self, req: Request<PbAuthEnableRequest>) -> Res<PbAuthEnableResponse> {
        let ((), header) = self.manage(&req, |a| a.enable())?;
        tracing::info!("store: authentication enabled");
        Ok(Response::new(PbAuthEnableResponse { header }))
    }

    async fn auth_disable(&self, req: Request<PbAuthDisableRequest>) -> Res<PbAuthDisableResponse> {
        let ((), header) = self.manage(&req, |a| {
            a.disable();
            Ok(())
        })?;
        tracing::warn!("store: authentication disabled: listeners now answer anyone");
        Ok(Response::new(PbAuthDisableResponse { header }))
    }

    async fn authenticate(
        &self,
        req: Request<PbAuthenticateRequest>,
    ) -> Res<PbAuthenticateResponse> {
        let r = req.into_inner();
        let shared = self.shared();
        let token = shared.auth().authenticate(&r.name, &r.password);
        let token = token.inspect_err(|_| {
            let name: String = r.name.chars().take(64).collect();
            tracing::warn!("store: authentication as {name:?} failed");
        })?;
        shared.counters.raft_index.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(PbAuthenticateResponse {
            header: shared.header(shared.rev()),
            token,
        }))
    }

    async fn user_add(&self, req: Request<PbAuthUserAddRequest>) -> Res<PbAuthUserAddResponse> {
        let ((), header) = self.manage(&req, |a| {
            let r = req.get_ref();
            let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
            a.user_add(&r.name, &r.password, no_password)
        })?;
        Ok(Response::new(PbAuthUserAddResponse { header }))
    }

    async fn user_get(&self, req: Request<PbAuthUserGetRequest>) -> Res<PbAuthUserGetResponse> {
        let (roles, header) = self.manage(&req, |a| a.user_get(&req.get_ref().name))?;
        Ok(Response::new(PbAuthUserGetResponse { header, roles }))
    }

    async fn user_list(&self, req: Request<PbAuthUserListRequest>) -> Res<PbAuthUserListResponse> {
        let (users, header) = self.manage(&req, |a| Ok(a.user_list()))?;
        Ok(Response::new(PbAuthUserListResponse { header, users }))
    }

    async fn user_delete(
        &self,
        req: Request<PbAuthUserDeleteRequest>,
    ) -> Res<PbAuthUserDeleteResponse> {
        let ((), header) = self.manage(&req, |a| a.user_delete(&req.get_ref().name))?;
        Ok(Response::new(PbAuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<PbAuthUserChangePasswordRequest>,
    ) -> Res<PbAuthUserChangePasswordResponse> {
        let ((), header) = self.manage(&req, |a| {
            let r = req.get_ref();
            a.user_change_password(&r.name, &r.password)
        })?;
        Ok(Response::new(PbAuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<PbAuthUserGrantRoleRequest>,
    ) -> Res<PbAuthUserGrantRoleResponse> {
        let ((), header) = self.manage(&req, |a| {
            let r = req.get_ref();
            a.user_grant_role(&r.user, &r.role)
        })?;
        Ok(Response::new(PbAuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<PbAuthUserRevokeRoleRequest>,
    ) -> Res<PbAuthUserRevokeRoleResponse> {
        let ((), header) = self.manage(&req, |a| {
            let r = req.get_ref();
            a.user_revoke_role(&r.name, &r.role)
        })?;
        Ok(Response::new(PbAuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, req: Request<PbAuthRoleAddRequest>) -> Res<PbAuthRoleAddResponse> {
        let ((), header) = self.manage(&req, |a| a.role_add(&req.get_ref().name))?;
        Ok(Response::new(PbAuthRoleAddResponse { header }))
    }

    async fn role_get(&self, req: Request<PbAuthRoleGetRequest>) -> Res<PbAuthRoleGetResponse> {
        let (perms, header) = self.manage(&req, |a| a.role_get(&req.get_ref().role))?;
        let perm = perms.into_iter().map(|p| to_pb(p).into()).collect();
        Ok(Response::new(PbAuthRoleGetResponse { header, perm }))
    }

    async fn role_list(&self, req: Request<PbAuthRoleListRequest>) -> Res<PbAuthRoleListResponse> {
        let (roles, header) = self.manage(&req, |a| Ok(a.role_list()))?;
        Ok(Response::new(PbAuthRoleListResponse { header, roles }))
    }

    async fn role_delete(
        &self,
        req: Request<PbAuthRoleDeleteRequest>,
    ) -> Res<PbAuthRoleDeleteResponse> {
        let ((), header) = self.manage(&req, |a| a.role_delete(&req.get_ref().role))?;
        Ok(Response::new(PbAuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<PbAuthRoleGrantPermissionRequest>,
    ) -> Res<PbAuthRoleGrantPermissionResponse> {
        let ((), header) = self.manage(&req, |a| {
            let r = req.get_ref();
            let p = r.perm.clone().unwrap_or_default();
            let perm = Perm {
                kind: p.perm_type,
                key: p.key,
                range_end: p.range_end,
            };
            a.role_grant(&r.name, perm)
        })?;
        Ok(Response::new(PbAuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<PbAuthRoleRevokePermissionRequest>,
    ) -> Res<PbAuthRoleRevokePermissionResponse> {
        let ((), header) = self.manage(&req, |a| {
            let r = req.get_ref();
            a.role_revoke(&r.role, &r.key, &r.range_end)
        })?;
        Ok(Response::new(PbAuthRoleRevokePermissionResponse { header }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_that_of_the_generated_server() {
        let generated = <PbAuthServer<Service> as NamedService>::NAME;
        assert_eq!(AuthApi::NAME, generated);
    }
}
