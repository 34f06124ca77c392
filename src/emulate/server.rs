//! One SSH connection to one emulated host (a russh server handler): public
//! keys from the `authorized_keys` file, session channels for `exec` (see
//! [`super::exec`]) and the `sftp` subsystem ([`super::files`]), agent
//! forwarding requests, and remote port forwards, which only record the
//! port: an in-process child reaches it by opening the forwarded channel
//! itself ([`super::child`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use russh::server::{Auth, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

use super::child::ChildCtx;
use super::files::SftpServer;
use super::{Emulator, Host};

pub(crate) struct Conn {
    pub emu: Arc<Emulator>,
    pub host: Arc<Host>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    agent: HashSet<ChannelId>,
    forwards: Arc<Mutex<Vec<u32>>>,
    handle: Option<Handle>,
}

impl Conn {
    pub fn new(emu: Arc<Emulator>, host: Arc<Host>) -> Conn {
        Conn {
            emu,
            host,
            channels: HashMap::new(),
            agent: HashSet::new(),
            forwards: Arc::new(Mutex::new(Vec::new())),
            handle: None,
        }
    }

    /// Accepts a key of the `authorized_keys` file; counts the others.
    fn authorized(&self, key: &russh::keys::PublicKey) -> Auth {
        if self
            .emu
            .authorized
            .iter()
            .any(|k| k.key_data() == key.key_data())
        {
            return Auth::Accept;
        }
        let refused = &self.host.counters.auth_refused;
        refused.fetch_add(1, Ordering::Relaxed);
        Auth::reject()
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.authorized(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.authorized(key.public_key))
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.handle = Some(session.handle());
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, id: ChannelId, _s: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&id);
        self.agent.remove(&id);
        Ok(())
    }

    async fn agent_request(&mut self, id: ChannelId, s: &mut Session) -> Result<bool, Self::Error> {
        self.agent.insert(id);
        s.channel_success(id)?;
        Ok(true)
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(channel), Some(handle)) = (self.channels.remove(&id), self.handle.clone()) else {
            return session.channel_failure(id);
        };
        session.channel_success(id)?;
        let line = String::from_utf8_lossy(data).into_owned();
        let ctx = ChildCtx {
            emu: self.emu.clone(),
            host: self.host.clone(),
            handle,
            forwards: self.forwards.clone(),
            agent: self.agent.contains(&id),
        };
        tokio::spawn(async move {
            let (read, write) = channel.split();
            let write = Arc::new(write);
            let code = super::exec::run(ctx, &line, read, write.clone()).await;
            let _ = write.exit_status(code).await;
            let _ = write.eof().await;
            let _ = write.close().await;
        });
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let channel = match (name, self.channels.remove(&id)) {
            ("sftp", Some(c)) => c,
            _ => return session.channel_failure(id),
        };
        session.channel_success(id)?;
        let sessions = &self.host.counters.sftp_sessions;
        sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let server = SftpServer::new(self.host.jail.clone(), self.emu.blobs.clone());
        russh_sftp::server::run(channel.into_stream(), server).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !matches!(address, "127.0.0.1" | "localhost") {
            return Ok(false);
        }
        if *port == 0 {
            *port = self.emu.next_port();
        }
        crate::ssh::lock(&self.forwards).push(*port);
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        crate::ssh::lock(&self.forwards).retain(|p| *p != port);
        Ok(true)
    }
}
