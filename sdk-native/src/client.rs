//! [`Client`]: the cloneable handle the application uses.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use promhub_core::client::ConnectionState;
use promhub_core::frames::{Group, to_payload};
use promhub_core::topic::{Pattern, Topic};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::Error;
use crate::config::ClientConfig;
use crate::driver::{Driver, Shared};
use crate::events::{ConnectionEvent, EventStream};
use crate::link::{Command, ConnectionInfo, Link, answer};
use crate::options::{PublishOptions, SubscribeOptions};
use crate::subscription::Subscription;

/// The hub's receipt for a publish: the event is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// The event id (the one given in [`PublishOptions::id`], or one the
    /// hub assigned).
    pub id: String,
    /// The event's position in the hub's log.
    pub seq: u64,
    /// True when the id was seen before: the event was not stored again and
    /// `seq` is the original one.
    pub duplicate: bool,
}

/// A connection to a promhub hub, shared by cheap clones.
///
/// One driver task per client owns the WebSocket and the protocol state
/// machine ([`promhub_core::client::ClientCore`]): it reconnects with
/// jittered backoff, restores every subscription, refreshes the token in
/// band and answers the hub's heartbeats. The handles only send it
/// requests. The driver stops when [`close`](Self::close) is called or
/// when the last handle, subscription and delivery is dropped.
#[derive(Clone)]
pub struct Client {
    link: Link,
    events: broadcast::Sender<ConnectionEvent>,
    state: watch::Receiver<ConnectionState>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the hub at `urls` (`ws://host:port/ws` or `wss://…`, or
    /// several such URLs: see [`HubUrls`]) and
    /// returns once a hub accepted the token. Fails when the first attempt
    /// on every hub fails ([`Error::Connect`]), or at the hub's refusal
    /// such as [`Error::Refused`]; after it, the client reconnects by
    /// itself, failing over between the hubs.
    pub async fn connect(urls: impl HubUrls, config: ClientConfig) -> Result<Client, Error> {
        let urls = urls.into_urls();
        let mut attempts_left = urls.len();
        let (client, mut events) = Client::spawn(urls, config)?;
        let mut refusal = None;
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::Connected { .. }) => return Ok(client),
                Ok(ConnectionEvent::AuthRefused { code, msg }) => {
                    refusal = Some(Error::from_hub(promhub_core::frames::ErrorFrame::new(
                        code, msg, None,
                    )));
                }
                Ok(ConnectionEvent::Disconnected { reason, .. }) => {
                    attempts_left = attempts_left.saturating_sub(1);
                    if refusal.is_some() || attempts_left == 0 {
                        client.close().await;
                        return Err(refusal.unwrap_or(Error::Connect(reason)));
                    }
                }
                Ok(ConnectionEvent::Closed { reason }) => return Err(Error::Connect(reason)),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
            }
        }
    }

    /// Returns at once and connects in the background, retrying with
    /// backoff until the hub is there; publishes wait in the outbound queue
    /// meanwhile. Must be called within a tokio runtime.
    pub fn connect_lazy(urls: impl HubUrls, config: ClientConfig) -> Result<Client, Error> {
        Client::spawn(urls.into_urls(), config).map(|(client, _)| client)
    }

    fn spawn(
        urls: Vec<String>,
        mut config: ClientConfig,
    ) -> Result<(Client, broadcast::Receiver<ConnectionEvent>), Error> {
        if urls.is_empty() {
            return Err(Error::InvalidUrl {
                url: String::new(),
                reason: "no hub URL given".to_owned(),
            });
        }
        for url in &urls {
            validate_url(url)?;
        }
        config.core.endpoints = urls.len();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = broadcast::channel(config.event_capacity.max(1));
        let (state_tx, state) = watch::channel(ConnectionState::Disconnected);
        let connection = Arc::new(ConnectionInfo::default());
        let client = Client {
            link: Link::new(commands, Arc::clone(&connection)),
            events: events.clone(),
            state,
        };
        let shared = Shared {
            events,
            state: state_tx,
            connection,
        };
        runtime.spawn(Driver::new(urls, config, command_rx, shared).run());
        Ok((client, event_rx))
    }

    /// Publishes `payload` (serialized as JSON) to `topic` and waits for the
    /// hub's `PUBACK`, i.e. until the event is durable.
    ///
    /// Fails with [`Error::Forbidden`] (ACL), [`Error::TooLarge`],
    /// [`Error::RateLimited`] (after waiting out `retry_after` and retrying
    /// while the request timeout allows), [`Error::TimedOut`],
    /// [`Error::Disconnected`] (outcome unknown: a publish with an
    /// [`id`](PublishOptions::id) is instead re-sent after the reconnect and
    /// de-duplicated by the hub), [`Error::QueueFull`] or [`Error::Closed`].
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
        opts: PublishOptions,
    ) -> Result<PubAck, Error> {
        let topic = Topic::parse(topic)?;
        let payload = to_payload(payload).map_err(Error::serialize)?;
        let (reply, answered) = oneshot::channel();
        // `rate_limited` with a `retry_after_ms` inside the request timeout
        // is retried by the core (shared with the browser SDK); only a
        // refusal it cannot wait out reaches this answer.
        self.link.send(Command::Publish {
            topic,
            payload,
            opts: opts.opts,
            reply,
        })?;
        answer(answered).await
    }

    /// Subscribes to `pattern` and returns once the hub confirmed
    /// (`SUBACK`). With a `group`, a durable consumer group: the hub keeps
    /// its cursor, shares the events among the group's subscribers and
    /// delivers each one again until it is acknowledged. Without, an
    /// ephemeral subscription: every matching event published from now on,
    /// for as long as the subscription lives.
    ///
    /// Not connected: waits for the connection (wrap it in a timeout to
    /// bound that). Fails with [`Error::Forbidden`] when the ACL allows no
    /// topic of the pattern.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        pattern: &str,
        group: Option<&str>,
        opts: SubscribeOptions,
    ) -> Result<Subscription<T>, Error> {
        let pattern = Pattern::parse(pattern)?;
        let group = group.map(Group::parse).transpose()?;
        let (reply, answered) = oneshot::channel();
        self.link.send(Command::Subscribe {
            pattern: pattern.clone(),
            group: group.clone(),
            buffer: opts.buffer_size(),
            opts: opts.opts,
            reply,
        })?;
        let subscribed = answer(answered).await?;
        Ok(Subscription::new(
            subscribed,
            pattern,
            group,
            self.link.clone(),
        ))
    }

    /// The connection events from now on (connecting, connected,
    /// disconnected, reconnecting in N ms, token refreshed, slow consumer…).
    pub fn events(&self) -> EventStream {
        EventStream::new(self.events.subscribe())
    }

    /// Where the connection stands right now.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Waits until the connection is in `state` (e.g.
    /// [`ConnectionState::Connected`]); fails with [`Error::Closed`] when
    /// the client stops first.
    pub async fn wait_for(&self, state: ConnectionState) -> Result<(), Error> {
        let mut watch = self.state.clone();
        watch
            .wait_for(|current| *current == state)
            .await
            .map(|_| ())
            .map_err(|_| Error::Closed)
    }

    /// Sends a `PING` and returns the round-trip time. The hub answers only
    /// once every event committed before it is queued for this connection
    /// and every earlier `ACK`/`NACK` of this connection is durable, so a
    /// `ping` after acknowledging is a sync point. Needs a connection
    /// ([`Error::NotConnected`] otherwise).
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (reply, answered) = oneshot::channel();
        self.link.send(Command::Ping { reply })?;
        answer(answered).await
    }

    /// Replaces the token: sent in-band when connected (the connection and
    /// subscriptions stay up), used by the next connection otherwise, and
    /// after the hub refused the previous token it reconnects.
    pub fn set_token(&self, token: impl Into<String>) -> Result<(), Error> {
        self.link.send(Command::SetToken(Some(token.into())))
    }

    /// Connects now: skips a pending reconnect delay, or starts over after
    /// the client stopped (terminal close, reconnect attempts exhausted).
    pub fn reconnect(&self) -> Result<(), Error> {
        self.link.send(Command::Reconnect)
    }

    /// Closes the connection (close code 1000) and stops the driver:
    /// waiting publishes fail, subscriptions end. Every clone is closed.
    pub async fn close(&self) {
        let (reply, closed) = oneshot::channel();
        if self.link.send(Command::Close { reply }).is_ok() {
            let _ = closed.await;
        }
    }
}

/// The hub URLs [`Client::connect`] takes: one (`&str`, `String`) or
/// several (an array, `Vec` or slice of them). With several, the client tries them in a random
/// order of its own and moves to the next on every new attempt (after a
/// failed attempt or a lost connection), with the usual reconnect backoff;
/// subscriptions and groups resume on the hub it reaches.
pub trait HubUrls {
    fn into_urls(self) -> Vec<String>;
}

impl HubUrls for &str {
    fn into_urls(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl HubUrls for String {
    fn into_urls(self) -> Vec<String> {
        vec![self]
    }
}

impl HubUrls for &String {
    fn into_urls(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl<S: Into<String>> HubUrls for Vec<S> {
    fn into_urls(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<S: Into<String>, const N: usize> HubUrls for [S; N] {
    fn into_urls(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<S: AsRef<str>> HubUrls for &[S] {
    fn into_urls(self) -> Vec<String> {
        self.iter().map(|url| url.as_ref().to_owned()).collect()
    }
}

fn validate_url(url: &str) -> Result<(), Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = if let Some(rest) = url.strip_prefix("ws://") {
        rest
    } else if let Some(rest) = url.strip_prefix("wss://") {
        if cfg!(not(feature = "rustls")) {
            return Err(invalid(
                "wss:// needs the `rustls` feature of the promhub crate",
            ));
        }
        rest
    } else {
        return Err(invalid("the scheme must be ws:// or wss://"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    url.into_client_request()
        .map(|_| ())
        .map_err(|e| invalid(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::validate_url;
    use crate::Error;

    #[test]
    fn urls_are_checked_before_connecting() {
        assert!(validate_url("ws://127.0.0.1:8090/ws").is_ok());
        assert!(validate_url("ws://localhost/ws?x=1").is_ok());
        for bad in [
            "http://127.0.0.1/ws",
            "127.0.0.1:8090",
            "ws://",
            "ws:///ws",
            "",
        ] {
            assert!(
                matches!(validate_url(bad), Err(Error::InvalidUrl { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
