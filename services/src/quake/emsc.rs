//! The project's own stand-in for EMSC's standing-order websocket, and the
//! recordings it plays.
//!
//! No real EMSC feed is reachable from the tests (nor, often, from a demo on
//! a laptop), so [`EmscStandIn`] plays its part: a websocket server on a
//! local port that sends frames to every connected client, as EMSC's
//! `wss://www.seismicportal.eu/standing_order/websocket` does. Tests play
//! frames one by one ([`EmscStandIn::play`]), drop the clients' connections
//! mid-stream ([`EmscStandIn::drop_connections`]) and wait for them to come
//! back ([`EmscStandIn::wait_for_clients`]); the one-process demo replays a
//! [`Recording`] with its recorded delays ([`EmscStandIn::replay`]).
//!
//! Frames played while no client is connected are kept (up to
//! [`MAX_BACKLOG`], the oldest dropped first) and sent, in order, to the next
//! client that connects, as a server that had them queued would. Frames
//! played while clients are connected go to those clients only.
//!
//! # Recordings
//!
//! A recording is a text file of one JSON object per line (JSON Lines), each
//! a frame and how long after the previous one it was sent:
//!
//! ```text
//! {"after_ms": 640, "text": "{\"action\":\"create\",\"data\":{...}}"}
//! {"after_ms": 910, "binary_hex": "1f8b0800ff", "note": "malformed: a gzip header, not UTF-8"}
//! ```
//!
//! - `after_ms`: the delay since the previous frame (since the start, for
//!   the first), milliseconds, a non-negative integer;
//! - exactly one of `text` (a text frame) and `binary_hex` (a binary frame,
//!   its bytes in hexadecimal, two digits a byte, either case);
//! - `note` (optional): a remark for the reader, not sent.
//!
//! Blank lines are skipped; any other field is an error. The recording
//! shipped in the repository, `assets/quakes/recording.jsonl` of the services
//! crate, is the output of [`sample_recording`] (a unit test keeps the two
//! equal): 66 events on the plate boundaries of the world, updates of some
//! of them (one arriving out of order, older than the update before it),
//! and one malformed message of every kind [`Quake::from_emsc`] rejects,
//! plus a binary frame that is not UTF-8.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::records::{Action, Quake, rfc3339};

/// The path of EMSC's websocket, which [`EmscStandIn::url`] uses too (the
/// stand-in answers on any path).
pub const PATH: &str = "/standing_order/websocket";
/// How many frames the stand-in keeps for a client while none is connected.
pub const MAX_BACKLOG: usize = 10_000;
/// How long a new connection has for its websocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits to send its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between two passes of a looping replay at full speed.
const LOOP_PAUSE: Duration = Duration::from_secs(1);

/// One websocket frame: text, or bytes (which need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

impl Frame {
    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Text(text) => text.as_bytes(),
            Frame::Binary(bytes) => bytes,
        }
    }

    fn message(&self) -> Message {
        match self {
            Frame::Text(text) => Message::text(text.clone()),
            Frame::Binary(bytes) => Message::binary(bytes.clone()),
        }
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::Text(text)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Frame {
        Frame::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Frame {
    fn from(bytes: Vec<u8>) -> Frame {
        Frame::Binary(bytes)
    }
}

impl From<&Recorded> for Frame {
    fn from(recorded: &Recorded) -> Frame {
        recorded.frame.clone()
    }
}

/// A websocket server standing in for EMSC's; see the [module docs](self).
/// Stops (its port closed, every connection dropped, every replay ended)
/// when dropped.
#[derive(Debug)]
pub struct EmscStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The number of connected clients.
    clients: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct State {
    clients: Vec<Client>,
    backlog: VecDeque<Message>,
    /// Connections and replays, aborted when the stand-in is dropped.
    tasks: Vec<AbortHandle>,
    next_id: u64,
    accepted: u64,
    /// The stand-in was dropped: tasks spawned from now on are aborted at once.
    stopped: bool,
}

#[derive(Debug)]
struct Client {
    id: u64,
    tx: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
enum Command {
    Send(Message),
    Hangup,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn play(&self, messages: impl IntoIterator<Item = Message>) -> usize {
        let mut state = lock(&self.state);
        let mut reached = 0;
        for message in messages {
            reached = state.deliver(message);
        }
        reached
    }

    fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = tokio::spawn(task);
        let mut state = lock(&self.state);
        if state.stopped {
            handle.abort();
        } else {
            state.tasks.retain(|t| !t.is_finished());
            state.tasks.push(handle.abort_handle());
        }
        handle
    }

    fn count_changed(&self, state: &State) {
        self.clients.send_replace(state.clients.len());
    }
}

impl State {
    /// Sends `message` to every client, or keeps it for the next one; how many it went to.
    fn deliver(&mut self, message: Message) -> usize {
        if self.clients.is_empty() {
            if self.backlog.len() >= MAX_BACKLOG {
                self.backlog.pop_front();
            }
            self.backlog.push_back(message);
            return 0;
        }
        for client in &self.clients {
            // A client whose connection ended is removed by its task.
            let _ = client.tx.send(Command::Send(message.clone()));
        }
        self.clients.len()
    }
}

impl EmscStandIn {
    /// Starts the server on `addr` (`127.0.0.1:0` for a free port).
    pub async fn start(addr: impl ToSocketAddrs) -> io::Result<EmscStandIn> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (clients, _) = watch::channel(0);
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), clients });
        let accept = tokio::spawn(accept(listener, shared.clone())).abort_handle();
        tracing::info!(url = %format!("ws://{addr}{PATH}"), "EMSC stand-in listening");
        Ok(EmscStandIn { addr, shared, accept })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL: `ws://<addr>/standing_order/websocket`.
    pub fn url(&self) -> String {
        format!("ws://{}{PATH}", self.addr)
    }

    /// Sends a frame to every connected client, or keeps it for the next
    /// client if none is connected; how many clients it went to.
    pub fn play(&self, frame: impl Into<Frame>) -> usize {
        self.shared.play([frame.into().message()])
    }

    /// Sends frames, in order, as [`play`](Self::play) does (no frame of
    /// another call comes between them); how many clients they went to.
    pub fn play_all<F: Into<Frame>>(&self, frames: impl IntoIterator<Item = F>) -> usize {
        self.shared.play(frames.into_iter().map(|f| f.into().message()))
    }

    /// Closes the TCP connection of every connected client without a
    /// websocket close handshake, as a server that crashed or a network that
    /// failed would; how many it closed. The frames played before are written
    /// to the connection first; frames played after go to the clients that
    /// connect next.
    pub fn drop_connections(&self) -> usize {
        let mut state = lock(&self.shared.state);
        let dropped = state.clients.len();
        for client in state.clients.drain(..) {
            let _ = client.tx.send(Command::Hangup);
        }
        self.shared.count_changed(&state);
        if dropped > 0 {
            tracing::info!(dropped, "EMSC stand-in dropped its connections");
        }
        dropped
    }

    /// How many clients are connected (their handshake done).
    pub fn clients(&self) -> usize {
        *self.shared.clients.borrow()
    }

    /// How many connections it has accepted so far (handshake done).
    pub fn connections_accepted(&self) -> u64 {
        lock(&self.shared.state).accepted
    }

    /// Waits until at least `n` clients are connected; an error of kind
    /// [`io::ErrorKind::TimedOut`] if they are not within `timeout`.
    pub async fn wait_for_clients(&self, n: usize, timeout: Duration) -> io::Result<()> {
        let mut clients = self.shared.clients.subscribe();
        match tokio::time::timeout(timeout, clients.wait_for(|c| *c >= n)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(io::Error::other("the EMSC stand-in stopped")),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} client(s) connected to the EMSC stand-in within {timeout:?}, not {n}", self.clients()),
            )),
        }
    }

    /// Plays `recording` in a background task, as [`Replay`] says (speed,
    /// looping, rebased times). The task ends with the recording (never, when
    /// looping) or with the stand-in; it returns how many frames it played.
    pub fn replay(&self, recording: Recording, replay: Replay) -> JoinHandle<u64> {
        tracing::info!(
            frames = recording.frames.len(),
            speed = replay.speed,
            looping = replay.looping,
            rebase = replay.rebase,
            "EMSC stand-in replaying a recording"
        );
        self.shared.spawn(run_replay(self.shared.clone(), recording, replay))
    }
}

impl Drop for EmscStandIn {
    fn drop(&mut self) {
        self.accept.abort();
        let mut state = lock(&self.shared.state);
        state.stopped = true;
        for task in state.tasks.drain(..) {
            task.abort();
        }
        state.clients.clear();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                shared.spawn(connection(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "EMSC stand-in: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client: the handshake, the frames it is sent (first the backlog), until it or the stand-in hangs up.
async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::accept_async(stream)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "EMSC stand-in: websocket handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let id = {
        let mut state = lock(&shared.state);
        state.accepted += 1;
        state.next_id += 1;
        let id = state.next_id;
        for message in state.backlog.drain(..) {
            let _ = tx.send(Command::Send(message));
        }
        state.clients.push(Client { id, tx });
        shared.count_changed(&state);
        id
    };
    tracing::debug!(?peer, client = id, "EMSC stand-in: client connected");
    serve(ws, rx).await;
    let mut state = lock(&shared.state);
    state.clients.retain(|c| c.id != id);
    shared.count_changed(&state);
    tracing::debug!(?peer, client = id, "EMSC stand-in: client gone");
}

async fn serve(ws: WebSocketStream<TcpStream>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let (mut sink, mut incoming) = ws.split();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Send(message)) => {
                    if sink.send(message).await.is_err() {
                        return;
                    }
                }
                // Dropping the stream closes the TCP connection, without a close frame.
                Some(Command::Hangup) | None => return,
            },
            // Reading answers the client's pings (tungstenite queues the pongs and sends them as it reads).
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) => {
                    // Send the close frame tungstenite queued in reply.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.flush()).await;
                    return;
                }
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// How [`EmscStandIn::replay`] plays a recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// The speed factor: 1 plays the recorded delays, 2 halves them, 0 (or
    /// anything not above 0) plays as fast as possible.
    pub speed: f64,
    /// Whether to start again at the end (forever).
    pub looping: bool,
    /// Whether each pass shifts the times of the frames it can read (see
    /// [`Recording::rebased`]) so that the newest revision is the moment the
    /// pass starts: a map then shows recent events.
    pub rebase: bool,
}

impl Replay {
    /// Once, at `speed`, times as recorded.
    pub fn at_speed(speed: f64) -> Replay {
        Replay { speed, looping: false, rebase: false }
    }

    /// Loops (or not).
    pub fn looping(mut self, looping: bool) -> Replay {
        self.looping = looping;
        self
    }

    /// Rebases the times (or not).
    pub fn rebased(mut self, rebase: bool) -> Replay {
        self.rebase = rebase;
        self
    }

    /// How long to wait for a frame recorded `after_ms` after the previous one; none at full speed.
    fn delay(&self, after_ms: u64) -> Option<Duration> {
        if !(self.speed > 0.0 && self.speed.is_finite()) {
            return None;
        }
        Some(Duration::from_secs_f64(after_ms as f64 / 1000.0 / self.speed))
    }
}

async fn run_replay(shared: Arc<Shared>, recording: Recording, replay: Replay) -> u64 {
    let mut played = 0;
    loop {
        let pass = if replay.rebase { recording.rebased(Utc::now()) } else { recording.clone() };
        for recorded in &pass.frames {
            if let Some(delay) = replay.delay(recorded.after_ms) {
                tokio::time::sleep(delay).await;
            }
            shared.play([recorded.frame.message()]);
            played += 1;
        }
        if !replay.looping || recording.frames.is_empty() {
            return played;
        }
        if replay.delay(0).is_none() {
            tokio::time::sleep(LOOP_PAUSE).await;
        }
    }
}

/// A recorded stream of frames; see the [module docs](self) for its file format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    /// The frames, in the order they are played.
    pub frames: Vec<Recorded>,
}

/// One frame of a [`Recording`].
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Its delay after the previous frame, milliseconds.
    pub after_ms: u64,
    /// The frame.
    pub frame: Frame,
    /// A remark for the reader of the file (what is wrong with a malformed message, say).
    pub note: Option<String>,
}

/// A line of a recording file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    after_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    binary_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// Why a recording could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecordingError {
    /// The file could not be read.
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A line is not a recorded frame.
    Line {
        /// The file, when read from one.
        path: Option<String>,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl RecordingError {
    /// The number of the line at fault, if a line is.
    pub fn line(&self) -> Option<usize> {
        match self {
            RecordingError::Line { line, .. } => Some(*line),
            RecordingError::Read { .. } => None,
        }
    }
}

impl fmt::Display for RecordingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordingError::Read { path, source } => write!(f, "cannot read the recording {path}: {source}"),
            RecordingError::Line { path: Some(path), line, reason } => write!(f, "{path}, line {line}: {reason}"),
            RecordingError::Line { path: None, line, reason } => write!(f, "recording, line {line}: {reason}"),
        }
    }
}

impl std::error::Error for RecordingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecordingError::Read { source, .. } => Some(source),
            RecordingError::Line { .. } => None,
        }
    }
}

impl Recording {
    /// Reads a recording file.
    pub fn load(path: impl AsRef<Path>) -> Result<Recording, RecordingError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| RecordingError::Read { path: path.display().to_string(), source })?;
        Recording::parse(&text).map_err(|e| match e {
            RecordingError::Line { line, reason, .. } => {
                RecordingError::Line { path: Some(path.display().to_string()), line, reason }
            }
            other => other,
        })
    }

    /// Reads a recording from its text (one JSON object per line).
    pub fn parse(text: &str) -> Result<Recording, RecordingError> {
        let mut frames = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |reason: String| RecordingError::Line { path: None, line: i + 1, reason };
            let parsed: Line = serde_json::from_str(line).map_err(|e| at(json_reason(&e)))?;
            let frame = match (parsed.text, parsed.binary_hex) {
                (Some(text), None) => Frame::Text(text),
                (None, Some(hex)) => Frame::Binary(from_hex(&hex).map_err(|e| at(format!("binary_hex: {e}")))?),
                (Some(_), Some(_)) => return Err(at("has both \"text\" and \"binary_hex\"; a frame is one".into())),
                (None, None) => return Err(at("has neither \"text\" nor \"binary_hex\"".into())),
            };
            frames.push(Recorded { after_ms: parsed.after_ms, frame, note: parsed.note });
        }
        Ok(Recording { frames })
    }

    /// The recording as a file's text (what [`parse`](Self::parse) reads back).
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for recorded in &self.frames {
            let (text, binary_hex) = match &recorded.frame {
                Frame::Text(text) => (Some(text.clone()), None),
                Frame::Binary(bytes) => (None, Some(to_hex(bytes))),
            };
            let line = Line { after_ms: recorded.after_ms, text, binary_hex, note: recorded.note.clone() };
            // A struct of numbers and strings always serializes.
            out += &serde_json::to_string(&line).unwrap_or_default();
            out.push('\n');
        }
        out
    }

    /// The frames' texts that [`Quake::from_emsc`] reads, and the others
    /// (binary frames among them), in order: `(good, malformed)`.
    pub fn split_valid(&self) -> (Vec<&Recorded>, Vec<&Recorded>) {
        self.frames.iter().partition(|r| matches!(&r.frame, Frame::Text(t) if Quake::from_emsc(t).is_ok()))
    }

    /// The recording with the `time` and `lastupdate` of every frame that
    /// [`Quake::from_emsc`] reads shifted by one constant, so that the latest
    /// `lastupdate` is `now` (order and spacing stay as recorded); the other
    /// frames unchanged.
    pub fn rebased(&self, now: DateTime<Utc>) -> Recording {
        let quakes = self.frames.iter().filter_map(|r| match &r.frame {
            Frame::Text(text) => Quake::from_emsc(text).ok(),
            Frame::Binary(_) => None,
        });
        let Some(latest) = quakes.map(|q| q.lastupdate).max() else {
            return self.clone();
        };
        let offset = TimeDelta::milliseconds((now - latest).num_milliseconds());
        let frames = self
            .frames
            .iter()
            .map(|r| match &r.frame {
                Frame::Text(text) => Recorded { frame: Frame::Text(shift(text, offset)), ..r.clone() },
                Frame::Binary(_) => r.clone(),
            })
            .collect();
        Recording { frames }
    }
}

/// The frame with its `time` and `lastupdate` moved by `offset`, if it is a quake; else as it is.
fn shift(text: &str, offset: TimeDelta) -> String {
    let Ok(quake) = Quake::from_emsc(text) else {
        return text.to_owned();
    };
    let Ok(mut message) = serde_json::from_str::<Value>(text) else {
        return text.to_owned();
    };
    if let Some(properties) = message.pointer_mut("/data/properties") {
        properties["time"] = Value::from(rfc3339(&(quake.time + offset)));
        properties["lastupdate"] = Value::from(rfc3339(&(quake.lastupdate + offset)));
    }
    message.to_string()
}

/// A serde_json error without its `at line 1 column n` (the line is the recording's).
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(reason) => format!("{reason} (column {})", e.column()),
        None => text,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("{} hexadecimal digits, not an even number", hex.len()));
    }
    let digit = |i: usize, c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} at position {} is not a hexadecimal digit", char::from(c), i + 1)),
    };
    hex.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| Ok((digit(2 * i, pair[0])? << 4) | digit(2 * i + 1, pair[1])?))
        .collect()
}

// ---------------------------------------------------------------------------
// The recording shipped in the repository.

/// Where an event happens, what it measures, and who located it.
struct Place {
    region: &'static str,
    lat: f64,
    lon: f64,
    depth: f64,
    mag: f64,
    magtype: &'static str,
    auth: &'static str,
    /// An aftershock of the event before it: minutes after, not hours.
    aftershock: bool,
}

const fn place(
    region: &'static str,
    lat: f64,
    lon: f64,
    depth: f64,
    mag: f64,
    magtype: &'static str,
    auth: &'static str,
) -> Place {
    Place { region, lat, lon, depth, mag, magtype, auth, aftershock: false }
}

const fn aftershock(region: &'static str, lat: f64, lon: f64, depth: f64, mag: f64, magtype: &'static str) -> Place {
    Place { region, lat, lon, depth, mag, magtype, auth: "JMA", aftershock: true }
}

/// The events of [`sample_recording`], in the order they happen: the
/// subduction zones of the Pacific, the Hellenic and Calabrian arcs, the
/// Anatolian faults, the San Andreas system, the Mid-Atlantic Ridge in
/// Iceland, the deep slabs of Fiji, the Flores Sea and Argentina.
const PLACES: [Place; 66] = [
    place("GREECE", 38.29, 21.78, 12.0, 3.1, "ml", "NOA"),
    place("WESTERN TURKEY", 39.21, 28.14, 8.0, 2.8, "ml", "KOERI"),
    place("CENTRAL ITALY", 42.84, 13.11, 9.0, 2.3, "ml", "INGV"),
    place("NEAR EAST COAST OF HONSHU, JAPAN", 37.72, 141.95, 45.0, 4.9, "mb", "JMA"),
    place("NORTHERN CHILE", -20.61, -69.87, 98.0, 4.4, "ml", "GUC"),
    place("SOUTHERN SUMATRA, INDONESIA", -4.92, 102.31, 35.0, 4.6, "mb", "BMKG"),
    place("NORTHERN CALIFORNIA", 38.82, -122.8, 2.0, 1.5, "ml", "NC"),
    place("SOUTHERN ALASKA", 61.32, -149.94, 41.0, 2.9, "ml", "AK"),
    place("ICELAND", 63.88, -22.37, 4.5, 2.1, "ml", "IMO"),
    place("CRETE, GREECE", 35.21, 25.83, 18.0, 3.4, "ml", "NOA"),
    place("EASTERN TURKEY", 38.37, 38.92, 7.0, 3.9, "ml", "AFAD"),
    place("SICILY, ITALY", 37.75, 14.99, 5.0, 2.6, "ml", "INGV"),
    place("HOKKAIDO, JAPAN REGION", 42.66, 143.22, 62.0, 5.3, "mb", "JMA"),
    place("CENTRAL CHILE", -33.18, -71.74, 38.0, 5.6, "mw", "GUC"),
    place("JAVA, INDONESIA", -8.32, 110.47, 88.0, 4.2, "mb", "BMKG"),
    place("SOUTHERN CALIFORNIA", 33.97, -116.83, 11.3, 2.2, "ml", "CI"),
    place("ALASKA PENINSULA", 55.84, -156.92, 32.0, 3.7, "ml", "AK"),
    place("ICELAND REGION", 66.43, -18.12, 9.0, 3.0, "ml", "IMO"),
    place("DODECANESE ISLANDS, GREECE", 36.62, 27.19, 14.0, 3.6, "ml", "NOA"),
    place("SOUTHERN ITALY", 40.62, 15.74, 11.0, 2.9, "ml", "INGV"),
    place("OFF EAST COAST OF HONSHU, JAPAN", 38.11, 143.27, 24.0, 6.9, "mb", "JMA"),
    aftershock("OFF EAST COAST OF HONSHU, JAPAN", 38.02, 143.41, 21.0, 5.4, "mb"),
    aftershock("OFF EAST COAST OF HONSHU, JAPAN", 38.25, 143.08, 30.0, 4.9, "mb"),
    place("KYUSHU, JAPAN", 32.71, 130.93, 10.0, 4.1, "mb", "JMA"),
    place("TARAPACA, CHILE", -19.82, -69.21, 112.0, 3.8, "ml", "GUC"),
    place("MOLUCCA SEA", 1.52, 126.31, 44.0, 5.1, "mb", "BMKG"),
    place("CENTRAL CALIFORNIA", 36.54, -121.11, 6.8, 2.0, "ml", "NC"),
    place("ANDREANOF ISLANDS, ALEUTIAN IS.", 51.62, -176.02, 28.0, 4.3, "mb", "AK"),
    place("NORTHERN MID-ATLANTIC RIDGE", 52.71, -31.92, 10.0, 4.7, "mb", "EMSC"),
    place("AEGEAN SEA", 39.21, 25.39, 16.0, 3.3, "ml", "NOA"),
    place("NORTHERN ITALY", 44.79, 10.58, 22.0, 3.0, "ml", "INGV"),
    place("SEA OF JAPAN", 40.48, 135.62, 388.0, 4.6, "mb", "JMA"),
    place("SANTIAGO DEL ESTERO, ARGENTINA", -27.53, -63.18, 574.0, 4.8, "mb", "EMSC"),
    place("FLORES SEA", -7.02, 122.48, 552.0, 5.0, "mb", "BMKG"),
    place("OFFSHORE NORTHERN CALIFORNIA", 40.32, -124.71, 14.0, 3.5, "ml", "NC"),
    place("FOX ISLANDS, ALEUTIAN ISLANDS", 53.02, -167.48, 55.0, 3.9, "ml", "AK"),
    place("TONGA ISLANDS", -20.47, -174.28, 103.0, 5.2, "mb", "EMSC"),
    place("FIJI REGION", -17.98, -178.21, 598.0, 5.4, "mb", "EMSC"),
    place("SOUTHERN GREECE", 37.03, 22.18, 24.0, 2.7, "ml", "NOA"),
    place("CENTRAL TURKEY", 38.94, 34.51, 6.0, 2.9, "ml", "AFAD"),
    place("TYRRHENIAN SEA", 39.21, 14.83, 312.0, 3.7, "ml", "INGV"),
    place("EASTERN HONSHU, JAPAN", 36.28, 140.58, 48.0, 4.4, "mb", "JMA"),
    place("ANTOFAGASTA, CHILE", -23.48, -68.47, 104.0, 4.1, "ml", "GUC"),
    place("BANDA SEA", -6.54, 129.82, 152.0, 5.0, "mb", "BMKG"),
    place("GREATER LOS ANGELES AREA, CALIF.", 34.05, -118.18, 9.6, 1.9, "ml", "CI"),
    place("KODIAK ISLAND REGION, ALASKA", 57.41, -153.62, 18.0, 3.4, "ml", "AK"),
    place("ICELAND", 64.63, -17.45, 6.0, 3.5, "ml", "IMO"),
    place("IONIAN SEA", 37.85, 20.11, 15.0, 3.8, "ml", "NOA"),
    place("ADRIATIC SEA", 43.11, 15.32, 10.0, 2.8, "ml", "INGV"),
    place("IZU ISLANDS, JAPAN REGION", 31.47, 140.06, 35.0, 4.7, "mb", "JMA"),
    place("CENTRAL PERU", -12.05, -75.48, 62.0, 4.3, "mb", "IGP"),
    place("SUMATRA, INDONESIA", -1.48, 99.83, 40.0, 4.5, "mb", "BMKG"),
    place("NEVADA", 38.51, -118.32, 7.1, 2.1, "ml", "NN"),
    place("CENTRAL ALASKA", 63.52, -148.46, 90.0, 2.6, "ml", "AK"),
    place("TAIWAN", 23.82, 121.61, 21.0, 4.6, "mb", "EMSC"),
    place("HINDU KUSH REGION, AFGHANISTAN", 36.51, 70.92, 212.0, 4.5, "mb", "EMSC"),
    place("SOUTHERN IRAN", 27.78, 56.52, 14.0, 4.4, "mb", "EMSC"),
    place("NEPAL", 28.21, 84.72, 15.0, 4.2, "mb", "EMSC"),
    place("SOUTHERN XINJIANG, CHINA", 39.52, 74.91, 12.0, 6.1, "mw", "EMSC"),
    place("NORTH ISLAND OF NEW ZEALAND", -38.52, 176.02, 160.0, 4.0, "ml", "WEL"),
    place("KERMADEC ISLANDS REGION", -29.52, -177.48, 35.0, 5.0, "mb", "EMSC"),
    place("VANUATU ISLANDS", -17.61, 167.82, 35.0, 5.5, "mw", "EMSC"),
    place("NEW BRITAIN REGION, P.N.G.", -5.62, 151.47, 55.0, 5.3, "mb", "EMSC"),
    place("MINDANAO, PHILIPPINES", 7.02, 126.51, 30.0, 4.8, "mb", "PHIV"),
    place("ROMANIA", 45.62, 26.48, 138.0, 3.6, "ml", "BUC"),
    place("ALBANIA", 41.32, 19.47, 17.0, 3.3, "ml", "EMSC"),
];

/// The events revised once after their creation (indexes into [`PLACES`]).
const REVISED: [usize; 11] = [3, 9, 12, 25, 31, 36, 43, 47, 58, 61, 64];
/// The main shock: revised twice (6.9 mb, then 7.0 mw, then 7.2 mw).
const MAIN_SHOCK: usize = 20;
/// Revised, and then sent an older revision (the stale update).
const STALE: usize = 13;

/// 2026-12-01T00:00:00Z, epoch milliseconds: the day of the recording.
const DAY_MS: i64 = 1_796_083_200_000;

/// A small deterministic generator of numbers (a 64-bit LCG, Knuth's constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// A number in `-max..=max` steps of `step`.
    fn jitter(&mut self, max: i64, step: f64) -> f64 {
        (self.range(0, (2 * max) as u64) as i64 - max) as f64 * step
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::milliseconds(ms)
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A revision of `quake`, `after_s` seconds after its last one.
fn revise(quake: &Quake, rng: &mut Lcg, after_s: u64, mag: f64, magtype: &str) -> Quake {
    let mut revised = quake.clone();
    revised.action = Action::Update;
    revised.lastupdate = quake.lastupdate + TimeDelta::seconds(after_s as i64);
    revised.lat = round(quake.lat + rng.jitter(5, 0.01), 2);
    revised.lon = round(quake.lon + rng.jitter(5, 0.01), 2);
    revised.depth = quake.depth.map(|d| round((d + rng.jitter(4, 1.0)).max(2.0), 1));
    revised.mag = round(mag, 1);
    revised.magtype = Some(magtype.to_owned());
    revised.auth = Some("EMSC".to_owned());
    revised
}

/// The recording shipped as `assets/quakes/recording.jsonl`, made here,
/// deterministically (the same every time): 66 events on one day,
/// 2026-12-01 (EMSC-like unids `20261201_0000101`, ...), created a few
/// minutes after they happened; 15 updates (revised magnitude and
/// location): 11 events revised once, the main shock of a sequence off
/// Honshu twice (6.9 mb, 7.0 mw, 7.2 mw), and one event revised and then
/// sent an older revision (the stale update); 24 malformed text messages, one of every kind [`Quake::from_emsc`]
/// rejects, and a binary frame that is not UTF-8; 300 to 1500 ms apart.
pub fn sample_recording() -> Recording {
    let mut rng = Lcg(0x2026_1201_e05c);
    // (when EMSC would send it, the frame, a note), sorted by the first.
    let mut good: Vec<(i64, String, Option<String>)> = Vec::new();
    let mut time_ms = DAY_MS + 3 * 60_000 + 17_400;
    let mut seq = 101;
    for (i, place) in PLACES.iter().enumerate() {
        if i > 0 {
            time_ms += if place.aftershock {
                rng.range(3 * 60, 9 * 60) as i64 * 1000 + rng.range(0, 9) as i64 * 100
            } else {
                rng.range(8 * 60, 24 * 60) as i64 * 1000 + rng.range(0, 9) as i64 * 100
            };
            seq += rng.range(1, 9);
        }
        let lag_ms = rng.range(90, 480) as i64 * 1000 + rng.range(0, 9) as i64 * 100;
        let create = Quake {
            action: Action::Create,
            unid: format!("20261201_{seq:07}"),
            time: at(time_ms),
            lastupdate: at(time_ms + lag_ms),
            lat: place.lat,
            lon: place.lon,
            depth: Some(place.depth),
            mag: place.mag,
            magtype: Some(place.magtype.to_owned()),
            flynn_region: Some(place.region.to_owned()),
            auth: Some(place.auth.to_owned()),
            evtype: Some("ke".to_owned()),
            source_id: Some((1_780_000 + seq * 3).to_string()),
            source_catalog: Some("EMSC-RTS".to_owned()),
        };
        let sent = |q: &Quake| q.lastupdate.timestamp_millis();
        good.push((sent(&create), create.to_emsc().to_string(), None));
        if REVISED.contains(&i) {
            // Never the same magnitude: -0.3 to +0.3, not 0.
            let step = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0][rng.range(0, 5) as usize];
            let mag = create.mag + step * 0.1;
            let magtype = if mag >= 5.0 { "mw" } else { place.magtype };
            let after_s = rng.range(5 * 60, 40 * 60);
            let update = revise(&create, &mut rng, after_s, mag, magtype);
            good.push((sent(&update), update.to_emsc().to_string(), None));
        }
        if i == MAIN_SHOCK {
            let first = revise(&create, &mut rng, 11 * 60, 7.0, "mw");
            let second = revise(&first, &mut rng, 47 * 60, 7.2, "mw");
            good.push((sent(&first), first.to_emsc().to_string(), None));
            good.push((sent(&second), second.to_emsc().to_string(), None));
        }
        if i == STALE {
            let earlier = revise(&create, &mut rng, 20 * 60, 5.7, "mw");
            let later = revise(&create, &mut rng, 45 * 60, 5.8, "mw");
            good.push((sent(&later), later.to_emsc().to_string(), None));
            // Sent 40 s after the later one, but revised before it: quake-loader must keep the later one.
            let note = format!(
                "stale update: lastupdate {} is older than that of the update before it ({})",
                rfc3339(&earlier.lastupdate),
                rfc3339(&later.lastupdate)
            );
            good.push((sent(&later) + 40_000, earlier.to_emsc().to_string(), Some(note)));
        }
    }
    good.sort_by_key(|(sent, _, _)| *sent);

    let bad = malformed();
    let mut frames = Vec::new();
    let mut next_bad = bad.into_iter().enumerate().peekable();
    let slots = next_bad.len() + 1;
    for (g, (_, text, note)) in good.iter().enumerate() {
        while let Some((_, (frame, bad_note))) = next_bad.next_if(|(k, _)| (k + 1) * good.len() / slots <= g) {
            let after_ms = rng.range(30, 150) * 10;
            frames.push(Recorded { after_ms, frame, note: Some(format!("malformed: {bad_note}")) });
        }
        let after_ms = rng.range(30, 150) * 10;
        frames.push(Recorded { after_ms, frame: Frame::Text(text.clone()), note: note.clone() });
    }
    Recording { frames }
}

/// One malformed message of every kind, each with what is wrong with it.
fn malformed() -> Vec<(Frame, &'static str)> {
    let mut seq = 900;
    let mut base = || {
        seq += 1;
        Quake {
            action: Action::Create,
            unid: format!("20261201_{seq:07}"),
            time: at(DAY_MS + 9 * 3_600_000 + i64::from(seq) * 61_000),
            lastupdate: at(DAY_MS + 9 * 3_600_000 + i64::from(seq) * 61_000 + 200_000),
            lat: 38.17,
            lon: 21.64,
            depth: Some(10.0),
            mag: 2.9,
            magtype: Some("ml".into()),
            flynn_region: Some("GREECE".into()),
            auth: Some("NOA".into()),
            evtype: Some("ke".into()),
            source_id: Some((1_780_000 + seq * 3).to_string()),
            source_catalog: Some("EMSC-RTS".into()),
        }
        .to_emsc()
    };
    let text = |v: Value| Frame::Text(v.to_string());
    let with = |mut v: Value, name: &str, value: Value| {
        v["data"]["properties"][name] = value;
        Frame::Text(v.to_string())
    };
    let without = |mut v: Value, name: &str| {
        if let Some(p) = v["data"]["properties"].as_object_mut() {
            p.remove(name);
        }
        Frame::Text(v.to_string())
    };
    let mut cut = base().to_string();
    cut.truncate(97);
    let mut out = vec![
        (Frame::Text(cut), "not JSON: the frame is cut off mid-message"),
        (Frame::Text("<html><body><h1>502 Bad Gateway</h1></body></html>".into()), "not JSON: an HTML error page"),
        (text(Value::Array(vec![base()])), "not an object: a JSON array"),
        (text(Value::from("create")), "not an object: a JSON string"),
    ];
    let mut v = base();
    if let Some(m) = v.as_object_mut() {
        m.remove("action");
    }
    out.push((text(v), "no action"));
    let mut v = base();
    v["action"] = Value::from("delete");
    out.push((text(v), "unknown action \"delete\""));
    let mut v = base();
    v["action"] = Value::from(2);
    out.push((text(v), "action is a number"));
    let mut v = base();
    if let Some(m) = v.as_object_mut() {
        m.remove("data");
    }
    out.push((text(v), "no data"));
    let mut v = base();
    if let Some(d) = v["data"].as_object_mut() {
        d.remove("properties");
    }
    out.push((text(v), "data without properties (not a GeoJSON feature)"));
    let mut v = base();
    v["data"]["properties"] = Value::Null;
    out.push((text(v), "data.properties is null, not an object"));
    out.extend([
        (without(base(), "unid"), "no unid"),
        (with(base(), "unid", Value::from(20_261_201_000_912_u64)), "unid is a number, not a string"),
        (with(base(), "unid", Value::from("")), "unid is empty"),
        (with(base(), "time", Value::from("01/12/2026 09:14:33")), "time is not an RFC 3339 time"),
        (with(base(), "time", Value::from(1_796_116_473_000_u64)), "time is a number, not a string"),
        (with(base(), "lastupdate", Value::from("2026-12-01T25:61:00Z")), "lastupdate is not a valid time"),
        (with(base(), "lat", Value::from("38.17N")), "lat is not a number"),
        (with(base(), "lat", Value::from(138.17)), "lat out of range"),
        (with(base(), "lon", Value::from("E21.64")), "lon is not a number"),
        (with(base(), "lon", Value::from(-181.5)), "lon out of range"),
        (with(base(), "mag", Value::from("2.9")), "mag is a string, not a number"),
        (with(base(), "mag", Value::from(12.3)), "mag out of range"),
        (with(base(), "mag", Value::Null), "mag is null"),
        (with(base(), "depth", Value::from("shallow")), "depth is not a number"),
        (
            Frame::Binary(vec![
                0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xab, 0x56, 0x4a, 0x4c, 0x2e, 0xc9, 0xcc,
                0xcf, 0x53, 0xb2, 0x52, 0x4a, 0x2e, 0x4a, 0x4d, 0x2c, 0x49, 0x55, 0xd2, 0x51, 0xff, 0xfe, 0x00,
            ]),
            "a binary frame (gzip-compressed), not UTF-8 text",
        ),
    ]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{HashMap, HashSet};

    use super::*;

    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/quakes/recording.jsonl");

    #[test]
    fn a_recording_reads_back_what_it_wrote() {
        let recording = Recording {
            frames: vec![
                Recorded { after_ms: 0, frame: Frame::Text("{\"a\": \"b\\n\"}".into()), note: None },
                Recorded { after_ms: 1500, frame: Frame::Binary(vec![0, 0xff, 0x80, 0x7f]), note: Some("n".into()) },
            ],
        };
        let text = recording.to_jsonl();
        assert!(text.contains(r#""binary_hex":"00ff807f""#), "{text}");
        assert_eq!(Recording::parse(&text).unwrap(), recording);
        // Blank lines are skipped; upper-case hex is read.
        let upper = Recording::parse("\n{\"after_ms\": 5, \"binary_hex\": \"FF0A\"}\n\n").unwrap();
        assert_eq!(upper.frames[0].frame, Frame::Binary(vec![0xff, 0x0a]));
    }

    #[test]
    fn a_bad_line_is_named_by_its_number_and_reason() {
        let good = r#"{"after_ms": 10, "text": "x"}"#;
        let cases = [
            ("not json", "expected"),
            (r#"{"text": "x"}"#, "missing field `after_ms`"),
            (r#"{"after_ms": -5, "text": "x"}"#, "invalid value"),
            (r#"{"after_ms": "5", "text": "x"}"#, "invalid type"),
            (r#"{"after_ms": 5}"#, "neither \"text\" nor \"binary_hex\""),
            (r#"{"after_ms": 5, "text": "x", "binary_hex": "00"}"#, "both"),
            (r#"{"after_ms": 5, "binary_hex": "abc"}"#, "binary_hex: 3 hexadecimal digits"),
            (r#"{"after_ms": 5, "binary_hex": "zz"}"#, "binary_hex: 'z' at position 1"),
            (r#"{"after_ms": 5, "txt": "x"}"#, "unknown field `txt`"),
            ("[1, 2]", "invalid type"),
        ];
        for (bad, expected) in cases {
            // Line 1 good, line 2 blank, line 3 good, line 4 the bad one.
            let text = format!("{good}\n\n{good}\n{bad}\n{good}\n");
            let err = Recording::parse(&text).unwrap_err();
            assert_eq!(err.line(), Some(4), "{bad}: {err}");
            let message = err.to_string();
            assert!(message.starts_with("recording, line 4: "), "{message}");
            assert!(message.contains(expected), "{bad}: {message:?} does not say {expected:?}");
            assert!(!message.contains("at line 1 column"), "{message}");
        }
    }

    #[test]
    fn loading_names_the_file() {
        let dir = std::env::temp_dir().join(format!("strom-emsc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.jsonl");
        std::fs::write(&path, "{\"after_ms\": 1, \"text\": \"x\"}\n{\"after_ms\": 1}\n").unwrap();
        let err = Recording::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl, line 2: has neither"), "{err}");
        let missing = Recording::load(dir.join("missing.jsonl")).unwrap_err();
        assert!(missing.to_string().contains("cannot read the recording"), "{missing}");
        assert_eq!(missing.line(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The shipped recording is the generator's output. `STROM_WRITE_RECORDING=1`
    /// writes it (after a change to the generator).
    #[test]
    fn the_shipped_recording_is_the_generators_output() {
        let generated = sample_recording();
        let text = generated.to_jsonl();
        assert_eq!(text, sample_recording().to_jsonl(), "the generator is not deterministic");
        if std::env::var("STROM_WRITE_RECORDING").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(Path::new(SHIPPED).parent().unwrap()).unwrap();
            std::fs::write(SHIPPED, &text).unwrap();
        }
        let shipped = std::fs::read_to_string(SHIPPED).unwrap();
        assert!(shipped == text, "{SHIPPED} is not sample_recording()'s output: run with STROM_WRITE_RECORDING=1");
        assert_eq!(Recording::load(SHIPPED).unwrap(), generated);
    }

    #[test]
    fn the_shipped_recording_has_what_the_tests_and_the_demo_need() {
        let recording = Recording::load(SHIPPED).unwrap();
        let (good, bad) = recording.split_valid();
        let quakes: Vec<Quake> =
            good.iter().map(|r| Quake::from_emsc(std::str::from_utf8(r.frame.bytes()).unwrap()).unwrap()).collect();

        // Events: at least 50, each created once before any update of it.
        let creates: Vec<&Quake> = quakes.iter().filter(|q| q.action == Action::Create).collect();
        let updates: Vec<&Quake> = quakes.iter().filter(|q| q.action == Action::Update).collect();
        assert!(creates.len() >= 60, "{} events", creates.len());
        let unids: HashSet<&str> = creates.iter().map(|q| q.unid.as_str()).collect();
        assert_eq!(unids.len(), creates.len(), "an event created twice");
        let mut seen = HashSet::new();
        for q in &quakes {
            match q.action {
                Action::Create => assert!(seen.insert(q.unid.as_str())),
                Action::Update => assert!(seen.contains(q.unid.as_str()), "update before create: {}", q.unid),
            }
        }
        assert!(updates.len() >= 10, "{} updates", updates.len());
        let re = |s: &str| {
            s.len() == 16 && s.as_bytes()[8] == b'_' && s.bytes().enumerate().all(|(i, b)| i == 8 || b.is_ascii_digit())
        };
        assert!(quakes.iter().all(|q| re(&q.unid)), "unids like 20261201_0000123");

        // Realistic values.
        let mags: Vec<f64> = quakes.iter().map(|q| q.mag).collect();
        assert!(mags.iter().all(|m| (1.5..=7.2).contains(m)));
        assert!(mags.contains(&1.5) && mags.contains(&7.2));
        let depths: Vec<f64> = quakes.iter().filter_map(|q| q.depth).collect();
        assert!(depths.iter().all(|d| (2.0..=600.0).contains(d)) && depths.iter().any(|d| *d > 500.0));
        for q in &quakes {
            let region = q.flynn_region.as_deref().unwrap();
            assert_eq!(region, region.to_uppercase());
            assert!(["ml", "mb", "mw"].contains(&q.magtype.as_deref().unwrap()));
            assert_eq!((q.evtype.as_deref(), q.source_catalog.as_deref()), (Some("ke"), Some("EMSC-RTS")));
            assert!(q.auth.is_some() && q.lastupdate > q.time);
        }
        for country in ["GREECE", "TURKEY", "ITALY", "JAPAN", "CHILE", "INDONESIA", "CALIF", "ALASKA", "ICELAND"] {
            assert!(creates.iter().any(|q| q.flynn_region.as_deref().unwrap().contains(country)), "{country}");
        }

        // Updates revise something, and exactly one is stale: older than an update sent before it.
        let mut last: HashMap<&str, &Quake> = HashMap::new();
        let mut stale = 0;
        for q in &quakes {
            if let Some(before) = last.get(q.unid.as_str()) {
                assert!(q.mag != before.mag || q.lat != before.lat || q.lon != before.lon, "{}", q.unid);
                if before.action == Action::Update && !q.supersedes(before) {
                    stale += 1;
                    continue;
                }
                assert!(q.supersedes(before), "{}", q.unid);
            }
            last.insert(&q.unid, q);
        }
        assert_eq!(stale, 1);

        // A malformed message of every kind, each rejected for its own reason.
        let reasons: Vec<String> = bad
            .iter()
            .map(|r| match &r.frame {
                Frame::Text(t) => Quake::from_emsc(t).unwrap_err().to_string(),
                Frame::Binary(b) => std::str::from_utf8(b).unwrap_err().to_string(),
            })
            .collect();
        let kinds = [
            "not JSON",
            "a JSON array, not an object",
            "a JSON string, not an object",
            "no \"action\"",
            "action \"delete\"",
            "action 2 ",
            "no \"data\"",
            "has no \"properties\"",
            "\"data.properties\" is a JSON null",
            "property unid: missing",
            "property unid: a JSON number, not a string",
            "invalid event",
            "property time: \"01/12/2026",
            "property time: a JSON number, not a string",
            "property lastupdate: \"2026-12-01T25:61:00Z\" is not an RFC 3339",
            "property lat: \"38.17N\" is not a number",
            "property lon: \"E21.64\" is not a number",
            "property mag: \"2.9\" is not a number",
            "property mag: missing",
            "property depth: \"shallow\" is not a number",
            "invalid utf-8",
        ];
        for kind in kinds {
            assert!(reasons.iter().any(|r| r.contains(kind)), "no malformed message says {kind:?}: {reasons:#?}");
        }
        let invalid: Vec<&String> = reasons.iter().filter(|r| r.starts_with("invalid event")).collect();
        for field in ["unid", "lat", "lon", "mag"] {
            assert!(invalid.iter().any(|r| r.contains(field)), "no out-of-range {field}: {invalid:#?}");
        }
        assert_eq!(bad.iter().filter(|r| matches!(r.frame, Frame::Binary(_))).count(), 1);
        assert!(bad.iter().all(|r| r.note.as_deref().is_some_and(|n| n.starts_with("malformed: "))));
        assert!(bad.len() >= 20, "{} malformed", bad.len());
        // None at the very start, so a test's first frames are events.
        assert!(
            good.len() > 60
                && Quake::from_emsc(std::str::from_utf8(recording.frames[0].frame.bytes()).unwrap()).is_ok()
        );

        // Delays for a demo.
        assert!(recording.frames.iter().all(|r| (300..=1500).contains(&r.after_ms)));
    }

    #[test]
    fn rebasing_moves_every_readable_event_by_one_offset_and_leaves_the_rest() {
        let recording = sample_recording();
        let now = at(DAY_MS + 40 * 86_400_000 + 123);
        let rebased = recording.rebased(now);
        assert_eq!(rebased.frames.len(), recording.frames.len());
        let mut offsets = HashSet::new();
        let mut latest = None;
        for (before, after) in recording.frames.iter().zip(&rebased.frames) {
            assert_eq!((before.after_ms, &before.note), (after.after_ms, &after.note));
            let readable = |r: &Recorded| match &r.frame {
                Frame::Text(t) => Quake::from_emsc(t).ok(),
                Frame::Binary(_) => None,
            };
            match (readable(before), readable(after)) {
                (Some(b), Some(a)) => {
                    offsets.insert(a.time - b.time);
                    offsets.insert(a.lastupdate - b.lastupdate);
                    assert_eq!((a.unid, a.mag, a.lat), (b.unid, b.mag, b.lat));
                    latest = latest.max(Some(a.lastupdate));
                }
                (None, None) => assert_eq!(before.frame, after.frame),
                _ => panic!("rebasing changed whether a frame is readable"),
            }
        }
        assert_eq!(offsets.len(), 1, "{offsets:?}");
        assert_eq!(latest, Some(now));
    }

    #[test]
    fn a_replay_waits_the_recorded_delays_divided_by_the_speed() {
        assert_eq!(Replay::at_speed(0.0).delay(1000), None);
        assert_eq!(Replay::at_speed(f64::NAN).delay(1000), None);
        assert_eq!(Replay::at_speed(2.0).delay(1000), Some(Duration::from_millis(500)));
        assert_eq!(Replay::at_speed(1.0).looping(true).rebased(true).delay(300), Some(Duration::from_millis(300)));
    }

    async fn client(stand_in: &EmscStandIn) -> WebSocketStream<TcpStream> {
        let tcp = TcpStream::connect(stand_in.addr()).await.unwrap();
        tokio_tungstenite::client_async(stand_in.url(), tcp).await.unwrap().0
    }

    async fn next(ws: &mut WebSocketStream<TcpStream>) -> Option<Message> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    }

    #[tokio::test]
    async fn the_stand_in_keeps_frames_for_the_next_client_and_sends_to_every_client() {
        let stand_in = EmscStandIn::start("127.0.0.1:0").await.unwrap();
        assert!(stand_in.url().starts_with("ws://127.0.0.1:") && stand_in.url().ends_with(PATH));
        // Before any client: kept.
        assert_eq!(stand_in.play_all(["one", "two"]), 0);
        let mut a = client(&stand_in).await;
        stand_in.wait_for_clients(1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(next(&mut a).await, Some(Message::text("one")));
        assert_eq!(next(&mut a).await, Some(Message::text("two")));
        let mut b = client(&stand_in).await;
        stand_in.wait_for_clients(2, Duration::from_secs(10)).await.unwrap();
        assert_eq!(stand_in.play(vec![0xffu8, 0x00]), 2);
        for ws in [&mut a, &mut b] {
            assert_eq!(next(ws).await, Some(Message::binary(vec![0xffu8, 0x00])));
        }
        // Dropped: what was played before still arrives, then the connection ends without a close frame.
        stand_in.play("three");
        assert_eq!(stand_in.drop_connections(), 2);
        assert_eq!(stand_in.clients(), 0);
        for ws in [&mut a, &mut b] {
            assert_eq!(next(ws).await, Some(Message::text("three")));
            assert_eq!(next(ws).await, None);
        }
        // Played while nobody is connected: to the client that comes back.
        stand_in.play("four");
        let mut c = client(&stand_in).await;
        assert_eq!(next(&mut c).await, Some(Message::text("four")));
        assert_eq!(stand_in.connections_accepted(), 3);
        // Pings are answered, even while nothing is played.
        c.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
        // A client that leaves politely is no longer counted.
        c.close(None).await.unwrap();
        let mut count = stand_in.shared.clients.subscribe();
        tokio::time::timeout(Duration::from_secs(10), count.wait_for(|c| *c == 0)).await.unwrap().unwrap();
        let err = stand_in.wait_for_clients(1, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_replay_plays_the_recording_in_order_and_stops_with_the_stand_in() {
        let stand_in = EmscStandIn::start("127.0.0.1:0").await.unwrap();
        let mut ws = client(&stand_in).await;
        stand_in.wait_for_clients(1, Duration::from_secs(10)).await.unwrap();
        let recording = sample_recording();
        let played = stand_in.replay(recording.clone(), Replay::at_speed(0.0)).await.unwrap();
        assert_eq!(played, recording.frames.len() as u64);
        for recorded in &recording.frames {
            assert_eq!(next(&mut ws).await, Some(recorded.frame.message()));
        }
        // A looping, slow replay ends when the stand-in is dropped; so does the connection.
        let replay = stand_in.replay(recording, Replay::at_speed(1.0).looping(true).rebased(true));
        drop(stand_in);
        assert!(tokio::time::timeout(Duration::from_secs(10), replay).await.unwrap().unwrap_err().is_cancelled());
        assert_eq!(next(&mut ws).await.filter(|m| !m.is_close()), None);
    }
}
