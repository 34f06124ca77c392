//! etcd's authentication state: users, roles with key-range permissions,
//! the on/off switch and the tokens handed out by `Authenticate`, kept as
//! etcd 3.4 keeps them and refused with etcd's own errors.
//!
//! Auth is off until `AuthEnable`, which needs a `root` user holding the
//! `root` role (etcdctl creates the role and grants it when it sees
//! [`EtcdError::RootRoleNotExist`]). While it is on, a request from a
//! listener's connection must carry a token (gRPC metadata `token`); the
//! user it names may read and write what its roles grant, and a user with
//! the `root` role may do everything, auth management included. Tokens are
//! etcd's "simple" kind: random, held in memory, dropped when auth is
//! disabled or their user is deleted or changes password.
//!
//! Passwords are kept as salted SHA-256 digests and compared in constant
//! time; the store lives in memory for one run, so there is nothing on disk
//! to attack offline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::access::Guard;
use super::error::EtcdError;

/// The user and the role with every right.
pub(crate) const ROOT: &str = "root";

/// etcd's permission types (`authpb.Permission.Type`); 2 is both.
pub(crate) const READ: i32 = 0;
pub(crate) const WRITE: i32 = 1;

/// One key-range permission of a role, as etcd's `authpb.Permission`:
/// `range_end` empty is `key` alone, `"\0"` every key from `key` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Perm {
    pub kind: i32,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

struct User {
    salt: [u8; 16],
    /// None: a user added with `no_password`, who cannot authenticate.
    digest: Option<[u8; 32]>,
    roles: BTreeSet<String>,
}

/// Users, roles and tokens of one store.
#[derive(Default)]
pub(crate) struct Auth {
    enabled: bool,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Vec<Perm>>,
    /// Token → user name.
    tokens: HashMap<String, String>,
    issued: u64,
}

fn digest(salt: &[u8; 16], password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finalize().into()
}

impl Auth {
    pub fn enable(&mut self) -> Result<(), EtcdError> {
        let root = self.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
        if !root.roles.contains(ROOT) {
            return Err(EtcdError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(())
    }

    pub fn disable(&mut self) {
        self.enabled = false;
        self.tokens.clear();
    }

    /// A token for `name`, if `password` is theirs.
    pub fn authenticate(&mut self, name: &str, password: &str) -> Result<String, EtcdError> {
        if !self.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(EtcdError::AuthFailed)?;
        let Some(want) = user.digest else {
            return Err(EtcdError::AuthFailed);
        };
        if !bool::from(digest(&user.salt, password).ct_eq(&want)) {
            return Err(EtcdError::AuthFailed);
        }
        self.issued += 1;
        let mut rng = rand::rng();
        let random: String = (0..16)
            .map(|_| char::from(rng.sample(rand::distr::Alphabetic)))
            .collect();
        let token = format!("{random}.{}", self.issued);
        self.tokens.insert(token.clone(), name.to_owned());
        Ok(token)
    }

    pub fn user_add(
        &mut self,
        name: &str,
        password: &str,
        no_password: bool,
    ) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(EtcdError::UserAlreadyExist);
        }
        let salt: [u8; 16] = rand::random();
        let digest = (!no_password).then(|| digest(&salt, password));
        let roles = BTreeSet::new();
        self.users.insert(
            name.to_owned(),
            User {
                salt,
                digest,
                roles,
            },
        );
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(EtcdError::UserNotFound)?;
        self.tokens.retain(|_, u| u != name);
        Ok(())
    }

    pub fn user_change_password(&mut self, name: &str, password: &str) -> Result<(), EtcdError> {
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        user.salt = rand::random();
        user.digest = Some(digest(&user.salt, password));
        self.tokens.retain(|_, u| u != name);
        Ok(())
    }

    /// The roles of `name`, sorted.
    pub fn user_get(&self, name: &str) -> Result<Vec<String>, EtcdError> {
        let user = self.users.get(name).ok_or(EtcdError::UserNotFound)?;
        Ok(user.roles.iter().cloned().collect())
    }

    pub fn user_list(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Grants `role` to `name`; granting it twice is not an error. The
    /// `root` role need not have been added first.
    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), EtcdError> {
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(EtcdError::RoleNotFound);
        }
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        user.roles.insert(role.to_owned());
        Ok(())
    }

    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT && role == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        if !user.roles.remove(role) {
            return Err(EtcdError::RoleNotGranted);
        }
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(EtcdError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_owned(), Vec::new());
        Ok(())
    }

    /// The permissions of `name`, sorted by key.
    pub fn role_get(&self, name: &str) -> Result<Vec<Perm>, EtcdError> {
        self.roles.get(name).cloned().ok_or(EtcdError::RoleNotFound)
    }

    pub fn role_list(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Deletes role `name` and takes it from every user who had it.
    pub fn role_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(EtcdError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.remove(name);
        }
        Ok(())
    }

    /// Adds `perm` to role `name`; a permission on the same range has its
    /// type replaced.
    pub fn role_grant(&mut self, name: &str, perm: Perm) -> Result<(), EtcdError> {
        let perms = self.roles.get_mut(name).ok_or(EtcdError::RoleNotFound)?;
        match perms
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(p) => p.kind = perm.kind,
            None => {
                let at = perms.partition_point(|p| p.key < perm.key);
                perms.insert(at, perm);
            }
        }
        Ok(())
    }

    pub fn role_revoke(
        &mut self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), EtcdError> {
        let perms = self.roles.get_mut(name).ok_or(EtcdError::RoleNotFound)?;
        let before = perms.len();
        perms.retain(|p| !(p.key == key && p.range_end == range_end));
        if perms.len() == before {
            return Err(EtcdError::PermissionNotGranted);
        }
        Ok(())
    }

    /// What the bearer of `token` may do: None while auth is off.
    pub fn rights(&self, token: Option<&str>) -> Result<Option<Arc<UserRights>>, EtcdError> {
        if !self.enabled {
            return Ok(None);
        }
        let token = token.ok_or(EtcdError::UserEmpty)?;
        let name = self.tokens.get(token).ok_or(EtcdError::InvalidAuthToken)?;
        let user = self.users.get(name).ok_or(EtcdError::InvalidAuthToken)?;
        let mut rights = UserRights {
            name: name.clone(),
            root: user.roles.contains(ROOT),
            read: Vec::new(),
            write: Vec::new(),
        };
        for perm in user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
        {
            let range = (perm.key.clone(), perm.range_end.clone());
            if perm.kind != WRITE {
                rights.read.push(range.clone());
            }
            if perm.kind != READ {
                rights.write.push(range);
            }
        }
        Ok(Some(Arc::new(rights)))
    }
}

/// What one authenticated user may touch: the union of its roles'
/// permissions, taken when the request arrived.
#[derive(Debug)]
pub(crate) struct UserRights {
    pub name: String,
    /// Holds the `root` role: every key, and auth management.
    pub root: bool,
    read: Vec<(Vec<u8>, Vec<u8>)>,
    write: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Guard for UserRights {
    fn who(&self) -> String {
        format!("user {:?}", self.name)
    }
    fn may_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.root || covered(&self.read, key, range_end)
    }
    fn may_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.root || covered(&self.write, key, range_end)
    }
}

/// The end of a range as an upper bound: None for "no end" (`"\0"`).
fn end_of(key: &[u8], range_end: &[u8]) -> Option<Vec<u8>> {
    match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            Some(next)
        }
        [0] => None,
        end => Some(end.to_vec()),
    }
}

/// Whether the union of `perms` holds every key of `[key, range_end)`.
fn covered(perms: &[(Vec<u8>, Vec<u8>)], key: &[u8], range_end: &[u8]) -> bool {
    let want_end = end_of(key, range_end);
    let mut spans: Vec<(&[u8], Option<Vec<u8>>)> = perms
        .iter()
        .map(|(k, e)| (k.as_slice(), end_of(k, e)))
        .collect();
    spans.sort_by(|a, b| a.0.cmp(b.0));
    // Sweep: `reached` is the end of what is covered from `key` on.
    let mut reached = Some(key.to_vec());
    for (start, end) in spans {
        let Some(at) = reached.as_deref() else { break };
        if start > at {
            continue;
        }
        reached = match (&end, at) {
            (None, _) => None,
            (Some(e), at) if e.as_slice() > at => Some(e.clone()),
            _ => reached,
        };
    }
    match (reached, want_end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(r), Some(w)) => r >= w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, e: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), e.as_bytes().to_vec())
    }

    #[test]
    fn coverage_of_keys_prefixes_and_open_ends() {
        let perms = [p("foo", ""), p("/a/", "/a0"), p("k", "\0")];
        assert!(covered(&perms, b"foo", b""));
        assert!(!covered(&perms, b"fo", b""));
        assert!(!covered(&perms, b"foo", b"fop"), "foo\\0 is not granted");
        assert!(covered(&perms, b"/a/x", b""));
        assert!(covered(&perms, b"/a/", b"/a0"));
        assert!(!covered(&perms, b"/a", b"/a0"));
        assert!(covered(&perms, b"kz", b"\0"));
        assert!(covered(&perms, b"k", b"z"));
        assert!(!covered(&perms, b"a", b"\0"));
        // Two adjacent spans join.
        let joined = [p("a", "c"), p("c", "e")];
        assert!(covered(&joined, b"a", b"e"));
        assert!(!covered(&joined, b"a", b"f"));
        assert!(!covered(&[], b"a", b""));
    }

    #[test]
    fn enable_needs_root_with_root_role_and_tokens_follow_users() {
        let mut a = Auth::default();
        assert_eq!(a.enable(), Err(EtcdError::RootUserNotExist));
        a.user_add(ROOT, "pw", false).unwrap();
        assert_eq!(a.enable(), Err(EtcdError::RootRoleNotExist));
        a.user_grant_role(ROOT, ROOT).unwrap();
        a.enable().unwrap();
        assert_eq!(a.authenticate(ROOT, "bad"), Err(EtcdError::AuthFailed));
        let t = a.authenticate(ROOT, "pw").unwrap();
        assert!(a.rights(Some(&t)).unwrap().unwrap().root);
        assert_eq!(a.rights(None).unwrap_err(), EtcdError::UserEmpty);
        assert_eq!(a.user_delete(ROOT), Err(EtcdError::InvalidAuthMgmt));
        a.user_add("alice", "pa", false).unwrap();
        a.role_add("r").unwrap();
        let perm = |kind, k: &str| Perm {
            kind,
            key: k.into(),
            range_end: Vec::new(),
        };
        a.role_grant("r", perm(READ, "foo")).unwrap();
        a.role_grant("r", perm(WRITE, "foo")).unwrap();
        assert_eq!(a.role_get("r").unwrap(), vec![perm(WRITE, "foo")]);
        a.user_grant_role("alice", "r").unwrap();
        let ta = a.authenticate("alice", "pa").unwrap();
        let alice = a.rights(Some(&ta)).unwrap().unwrap();
        assert!(alice.may_write(b"foo", b"") && !alice.may_read(b"foo", b""));
        a.user_change_password("alice", "pb").unwrap();
        assert_eq!(
            a.rights(Some(&ta)).unwrap_err(),
            EtcdError::InvalidAuthToken
        );
        a.disable();
        assert!(a.rights(Some(&t)).unwrap().is_none());
    }
}
