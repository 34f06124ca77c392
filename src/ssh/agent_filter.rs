//! What a gateway may ask of the agent forwarded to it: list the keys and
//! sign with them, nothing else. Every agent channel a server opens towards
//! us is relayed here request by request (the ssh-agent protocol is one
//! length-prefixed request, one reply); adding, removing or locking keys,
//! and extensions, are answered `SSH_AGENT_FAILURE` without reaching the
//! agent, whether it is the user's own or the one `mgmt` serves.
//!
//! A gateway that holds the forwarded agent can still sign with every key it
//! lists for as long as the run lasts: that is what forwarding is for, and
//! why only the keys named with `-i` are served when there are any.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// OpenSSH's bound on one agent message.
const MAX_MESSAGE: usize = 256 * 1024;
/// `SSH_AGENTC_REQUEST_IDENTITIES`.
const REQUEST_IDENTITIES: u8 = 11;
/// `SSH_AGENTC_SIGN_REQUEST`.
const SIGN_REQUEST: u8 = 13;
/// `SSH_AGENT_FAILURE`.
const FAILURE: u8 = 5;

/// Relays requests from `client` (a gateway's agent channel) to `agent`
/// and their replies back, until `client` closes; refused requests are
/// answered here.
pub(crate) async fn relay<C, A>(mut client: C, mut agent: A) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(request) = read_message(&mut client).await? {
        let kind = request.first().copied().unwrap_or(0);
        if kind == REQUEST_IDENTITIES || kind == SIGN_REQUEST {
            write_message(&mut agent, &request).await?;
            match read_message(&mut agent).await? {
                Some(reply) => write_message(&mut client, &reply).await?,
                None => return Ok(()),
            }
        } else {
            tracing::warn!(
                "agent: a forwarded channel asked for request type {kind}; refused (only listing keys and signing are served)"
            );
            write_message(&mut client, &[FAILURE]).await?;
        }
    }
    Ok(())
}

/// One length-prefixed message; `None` at a clean end of stream.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("agent message of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "agent message too long")
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::agent::{keygen, OwnAgent};
    use russh::keys::agent::client::AgentClient;

    /// A real agent behind the filter: adding, removing every key, locking
    /// and extensions are answered FAILURE and change nothing; listing and
    /// signing work.
    #[tokio::test]
    async fn only_listing_and_signing_reach_the_agent() {
        let d = tempfile::tempdir().unwrap();
        let path = keygen(d.path());
        let agent = OwnAgent::start(std::slice::from_ref(&path)).await.unwrap();
        let through_filter = || async {
            let upstream = tokio::net::UnixStream::connect(agent.socket())
                .await
                .unwrap();
            let (gateway_side, filter_side) = tokio::io::duplex(64 * 1024);
            (gateway_side, tokio::spawn(relay(filter_side, upstream)))
        };
        // ADD_IDENTITY (body never parsed), REMOVE_ALL_IDENTITIES, LOCK
        // "pw", EXTENSION: each answered FAILURE by the filter.
        let (mut raw, task) = through_filter().await;
        for request in [
            &[17u8, 0, 0, 0, 1, b'x'][..],
            &[19],
            &[22, 0, 0, 0, 2, b'p', b'w'],
            &[27],
        ] {
            write_message(&mut raw, request).await.unwrap();
            let reply = read_message(&mut raw).await.unwrap();
            assert_eq!(
                reply.as_deref(),
                Some(&[FAILURE][..]),
                "request {}",
                request[0]
            );
        }
        drop(raw);
        task.await.unwrap().unwrap();
        // The agent still holds its one key, unlocked, and signs with it.
        let (side, task) = through_filter().await;
        let mut c = AgentClient::connect(side);
        let ids = c.request_identities().await.unwrap();
        assert_eq!(ids.len(), 1);
        let signed = c.sign_request(&ids[0], None, b"to sign".to_vec()).await;
        assert!(signed.is_ok(), "signing was refused: {:?}", signed.err());
        drop(c);
        task.await.unwrap().unwrap();
    }
}
