//! A worker: one thread (pinned to a core when configured) that owns a [`PacketIo`] backend,
//! its stream table and its statistics, and runs the poll loop.
//!
//! Loop, each iteration bounded:
//! 1. apply up to [`COMMANDS_PER_LOOP`] commands;
//! 2. receive one burst (≤ 32), waiting at most `idle_wait` when nothing is ready (not at all
//!    while a burst is held);
//! 3. read the clock once; run the pipeline on each datagram; queue forwards;
//! 4. transmit the burst; count failures. With overlapped bursts (ADR 0021) steps 3 and 4
//!    apply to the burst held from the iteration before, and the one just received is held
//!    while its stream lines are fetched (see [`Worker::bursts`]);
//! 5. record per-packet processing time; every few milliseconds sweep a bounded slice of
//!    streams for media timeouts and publish counters to [`WorkerShared`].
//!
//! Nothing on the packet path locks, allocates or logs. The histogram is handed over through a
//! mutex once per publish interval with `try_lock`, never waiting.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use hdrhistogram::Histogram;

use crate::command::{
    CommandError, ConfOp, ConfReply, LegSnapshot, LegSpec, LegUpdate, MediaCommand, MediaEvent,
    RelaySnapshot, RelaySpec, StreamSnapshot,
};
use crate::config::{OverlapBursts, BURST_SIZE_MAX};
use crate::ids::{Component, PortHandle, RelayId, Side, StreamIdx, WorkerId};
use crate::io::{PacketIo, RxBatch, TxDesc};
use crate::mixer::{ConfId, MixOut, Mixer};
use crate::pipeline::{self, EventSink, Verdict};
use crate::player::{Player, Step, FRAME_BYTES_MAX, RTP_HEADER};
use crate::stats::{DropCounters, DropReason, DROP_SLOTS};
use crate::table::{Staged, Stream, StreamTable, NO_DTMF_PT};

/// Commands applied per loop iteration, so a command storm cannot starve packets.
pub const COMMANDS_PER_LOOP: usize = 64;
/// How often counters are published and timeouts swept.
const HOUSEKEEPING_NS: u64 = 5_000_000;
/// Histogram publish interval.
const HIST_PUBLISH_NS: u64 = 250_000_000;
/// Longest stretch before a poll-mode receive that returned packets still counted as busy: a
/// full burst, copies included, takes a few microseconds. A longer one means the thread was
/// descheduled, and that time is not the worker's work.
pub(crate) const RX_CALL_MAX_NS: u64 = 50_000;
/// Highest per-packet processing time the histogram resolves (10 ms); larger values saturate.
const HIST_MAX_NS: u64 = 10_000_000;

/// Per-worker numbers readable from other threads (metrics, benches).
#[derive(Debug)]
pub struct WorkerShared {
    pub id: WorkerId,
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_forwarded: AtomicU64,
    pub bytes_out: AtomicU64,
    pub drops: [AtomicU64; DROP_SLOTS],
    pub streams: AtomicU64,
    pub relays: AtomicU64,
    /// Nanoseconds spent processing (not waiting for packets).
    pub busy_ns: AtomicU64,
    /// Nanoseconds of loop wall time.
    pub wall_ns: AtomicU64,
    pub events_dropped: AtomicU64,
    /// Packets sent by media playback (not counted as forwarded).
    pub packets_played: AtomicU64,
    /// Playbacks in progress.
    pub players: AtomicU64,
    /// Packets conference members sent into the mixer.
    pub mixed_in: AtomicU64,
    /// Mixed packets sent to conference members.
    pub mixed_out: AtomicU64,
    /// Member frames concealed (lost or late audio).
    pub mix_concealed: AtomicU64,
    /// Member packets too late for their playout point.
    pub mix_late: AtomicU64,
    pub conferences: AtomicU64,
    pub conference_members: AtomicU64,
    pub rx_calls: AtomicU64,
    /// Receive calls that failed (not counting "nothing queued").
    pub rx_errors: AtomicU64,
    pub tx_calls: AtomicU64,
    /// Datagrams the backend sent through its raw socket.
    pub tx_raw: AtomicU64,
    pub running: AtomicBool,
    /// The worker holds each burst until its next receive call (`overlap_bursts` as the
    /// worker resolved it with its backend).
    pub overlapped: AtomicBool,
    /// Core the worker is pinned to, −1 when not pinned.
    pub pinned_core: std::sync::atomic::AtomicI64,
    /// Per-packet processing time, nanoseconds (cumulative since start).
    pub processing_ns: Mutex<Histogram<u64>>,
    /// Time from the end of a receive call to the end of the matching transmit, nanoseconds,
    /// one sample per packet: the latency the worker adds to a packet already received.
    pub burst_ns: Mutex<Histogram<u64>>,
    /// Conference tick time, nanoseconds (cumulative since start).
    pub mix_tick_ns: Mutex<Histogram<u64>>,
}

impl WorkerShared {
    pub fn new(id: WorkerId) -> Self {
        WorkerShared {
            id,
            packets_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            packets_forwarded: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            streams: AtomicU64::new(0),
            relays: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            wall_ns: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            packets_played: AtomicU64::new(0),
            players: AtomicU64::new(0),
            mixed_in: AtomicU64::new(0),
            mixed_out: AtomicU64::new(0),
            mix_concealed: AtomicU64::new(0),
            mix_late: AtomicU64::new(0),
            conferences: AtomicU64::new(0),
            conference_members: AtomicU64::new(0),
            rx_calls: AtomicU64::new(0),
            rx_errors: AtomicU64::new(0),
            tx_calls: AtomicU64::new(0),
            tx_raw: AtomicU64::new(0),
            running: AtomicBool::new(false),
            overlapped: AtomicBool::new(false),
            pinned_core: std::sync::atomic::AtomicI64::new(-1),
            processing_ns: Mutex::new(new_histogram()),
            burst_ns: Mutex::new(new_histogram()),
            mix_tick_ns: Mutex::new(new_histogram()),
        }
    }

    pub fn drops(&self) -> DropCounters {
        let mut d = DropCounters::default();
        for (i, a) in self.drops.iter().enumerate() {
            d.0[i] = a.load(Ordering::Relaxed);
        }
        d
    }
}

/// A histogram of nanoseconds with the worker's bounds (1 ns to 10 ms, 2 digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, HIST_MAX_NS, 2).expect("valid histogram bounds")
}

/// Settings a worker needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub bind: IpAddr,
    pub burst_size: usize,
    pub overlap_bursts: OverlapBursts,
    pub idle_wait: Duration,
    pub media_timeout: Option<Duration>,
    pub streams_max: usize,
}

/// Events go to a bounded channel; when it is full they are counted and dropped.
struct ChannelSink<'a> {
    tx: &'a Sender<MediaEvent>,
    dropped: u64,
}

impl EventSink for ChannelSink<'_> {
    fn emit(&mut self, event: MediaEvent) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(event)
        {
            self.dropped += 1;
        }
    }
}

/// A received burst held back until the next receive call (see [`Worker::bursts`]).
#[derive(Debug, Clone, Copy)]
struct Held {
    staged: Staged,
    /// When it was received.
    rx_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct RelayStreams {
    rtp: [StreamIdx; 2],
    rtcp: [Option<StreamIdx>; 2],
}

/// Local totals, published to [`WorkerShared`] periodically.
#[derive(Default)]
struct Totals {
    packets_in: u64,
    bytes_in: u64,
    packets_forwarded: u64,
    bytes_out: u64,
    drops: DropCounters,
    busy_ns: u64,
    wall_ns: u64,
    events_dropped: u64,
    packets_played: u64,
}

/// The worker state; [`Worker::run`] is its thread body.
pub struct Worker<Io: PacketIo> {
    cfg: WorkerConfig,
    io: Io,
    table: StreamTable,
    relays: HashMap<RelayId, RelayStreams>,
    commands: Receiver<MediaCommand>,
    events: Sender<MediaEvent>,
    shared: Arc<WorkerShared>,
    hist: Histogram<u64>,
    burst_hist: Histogram<u64>,
    totals: Totals,
    /// Two batches: `batches[cur]` receives (and carries played and mixed packets);
    /// the other holds the burst received before, while it waits for its turn (see
    /// [`PacketIo::overlap_bursts`]).
    batches: [Io::Batch; 2],
    cur: usize,
    /// The burst in `batches[cur ^ 1]` waiting to be processed, when bursts overlap.
    held: Option<Held>,
    overlap: bool,
    tx: [TxDesc; BURST_SIZE_MAX],
    epoch: Instant,
    sweep_cursor: usize,
    last_housekeeping_ns: u64,
    last_hist_ns: u64,
    stop: bool,
    /// Playbacks in progress (few; walked on every loop while non-empty).
    players: Vec<Player>,
    /// Earliest time a player has a packet due.
    next_play_ns: u64,
    /// Scratch buffer a player writes its next packet into.
    play_buf: Box<[u8; RTP_HEADER + FRAME_BYTES_MAX]>,
    /// Distinguishes playbacks' SSRCs and initial sequence numbers.
    play_seed: u64,
    /// Conferences whose members' streams this worker owns.
    mixer: Mixer,
}

impl<Io: PacketIo> Worker<Io> {
    pub fn new(
        cfg: WorkerConfig,
        io: Io,
        commands: Receiver<MediaCommand>,
        events: Sender<MediaEvent>,
        shared: Arc<WorkerShared>,
    ) -> Self {
        let streams_hint = cfg.streams_max.min(1 << 16);
        let tx0 = TxDesc {
            buf: 0,
            len: 0,
            port: PortHandle(0),
            dst: SocketAddr::from(([0, 0, 0, 0], 0)),
            stream: StreamIdx(0),
            sent: false,
        };
        let batches = [io.new_batch(), io.new_batch()];
        let overlap = match cfg.overlap_bursts {
            OverlapBursts::Auto => io.overlap_bursts(),
            OverlapBursts::On => true,
            OverlapBursts::Off => false,
        };
        shared.overlapped.store(overlap, Ordering::Relaxed);
        Worker {
            cfg,
            io,
            table: StreamTable::with_capacity(streams_hint),
            relays: HashMap::new(),
            commands,
            events,
            shared,
            hist: new_histogram(),
            burst_hist: new_histogram(),
            totals: Totals::default(),
            batches,
            cur: 0,
            held: None,
            overlap,
            tx: [tx0; BURST_SIZE_MAX],
            epoch: Instant::now(),
            sweep_cursor: 0,
            last_housekeeping_ns: 0,
            last_hist_ns: 0,
            stop: false,
            players: Vec::new(),
            next_play_ns: u64::MAX,
            play_buf: Box::new([0; RTP_HEADER + FRAME_BYTES_MAX]),
            play_seed: std::process::id().into(),
            mixer: Mixer::new(u64::from(std::process::id()).rotate_left(29)),
        }
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        // Nanoseconds since the worker started; u64 lasts 584 years.
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs until a `Shutdown` command arrives or the command channel closes.
    pub fn run(mut self) {
        self.shared.running.store(true, Ordering::Release);
        let mut t_prev = self.now_ns();
        while !self.stop {
            let t = self.poll_once(t_prev);
            self.totals.wall_ns += t.saturating_sub(t_prev);
            t_prev = t;
        }
        if self.held.is_some() {
            // The burst held back is forwarded, not lost.
            self.bursts(0, self.now_ns());
        }
        self.publish(self.now_ns(), true);
        self.shared.running.store(false, Ordering::Release);
    }

    /// One loop iteration, the last one having ended at `t_in`; returns the last clock
    /// reading it took.
    fn poll_once(&mut self, t_in: u64) -> u64 {
        let commands_end = self.apply_commands();
        let wait = if commands_end.is_some() || self.held.is_some() {
            Duration::ZERO
        } else if self.players.is_empty() && self.mixer.is_empty() {
            self.cfg.idle_wait
        } else {
            // Wake for the next played packet or conference tick.
            let due = self.next_play_ns.min(self.mixer.next_due_ns());
            let until = due.saturating_sub(self.now_ns());
            self.cfg.idle_wait.min(Duration::from_nanos(until))
        };
        let n = self
            .io
            .rx_burst(&mut self.batches[self.cur], self.cfg.burst_size, wait);
        let now = self.now_ns();
        let mut end = now;
        if n > 0 || self.held.is_some() {
            end = self.bursts(n, now);
            // The receive call is work too when it cannot have waited. It began at the last
            // clock reading before it: the end of the commands, if any (they counted their
            // own time), or else the end of the last iteration.
            let before = commands_end.unwrap_or(t_in).min(now);
            let from = if n > 0 && !self.io.rx_waits() && now - before <= RX_CALL_MAX_NS {
                before
            } else {
                now
            };
            self.totals.busy_ns += end - from;
        }
        if !self.players.is_empty() && end >= self.next_play_ns {
            let t0 = self.now_ns();
            self.run_players(t0);
            end = self.now_ns();
            self.totals.busy_ns += end - t0;
        }
        if !self.mixer.is_empty() && end >= self.mixer.next_due_ns() {
            let t0 = self.now_ns();
            self.run_mixer(t0);
            end = self.now_ns();
            self.totals.busy_ns += end - t0;
        }
        if now.saturating_sub(self.last_housekeeping_ns) >= HOUSEKEEPING_NS {
            self.housekeeping(now);
            // Every few milliseconds: one more clock reading, so that the housekeeping counts
            // as busy and is not in the next receive call's stretch.
            let t = self.now_ns().max(end);
            self.totals.busy_ns += t - end;
            end = t;
        }
        end
    }

    /// Processes the `n` packets the last receive call put into `batches[cur]` at `now`, and
    /// the burst held from the call before, if any; returns the clock read at the end.
    ///
    /// A burst's stream lines are fetched in three dependent waves (see
    /// [`StreamTable::for_each_prefetched`]). Without overlap the waves run back to back and
    /// the burst is processed and sent at once. With overlap ([`PacketIo::overlap_bursts`])
    /// the new burst is held until the next call, and its waves run between the steps of the
    /// held one: its port-index entries are requested before the held burst is processed,
    /// its ingress streams halfway through, its first egress streams after the held burst is
    /// sent, so that no wave waits for the one before (ADR 0021). A held burst goes at the
    /// next call, whatever that call receives (the receive does not wait while a burst is
    /// held): a packet waits one receive call and one burst longer, and the latency
    /// histogram counts that wait.
    fn bursts(&mut self, n: usize, now: u64) -> u64 {
        let mut ports = [PortHandle(0); BURST_SIZE_MAX];
        let batch = &self.batches[self.cur];
        for (i, p) in ports.iter_mut().enumerate().take(n) {
            *p = batch.meta(i).port;
        }
        let ports = &ports[..n.min(BURST_SIZE_MAX)];
        self.table.stage_ports(ports);
        if !self.overlap {
            let staged = self.table.stage_ingress(ports);
            self.table.stage_egress(&staged);
            let ntx = self.run_pipeline(self.cur, &staged, 0..staged.len(), now, 0);
            self.transmit(self.cur, staged.len(), ntx);
            return self.record(now, now, staged.len());
        }
        // Wave 2 halfway through the held burst: its port-index entries have had half a
        // burst's work to arrive (read at once they were a wait of their own), and its
        // ingress lines still the other half and the transmit; requested after the whole
        // held burst, as first built, they cost 8 % at 1M streams.
        let held = self.held.take();
        let (staged, ntx) = match &held {
            Some(h) => {
                let half = h.staged.len() / 2;
                let ntx = self.run_pipeline(self.cur ^ 1, &h.staged, 0..half, now, 0);
                let staged = self.table.stage_ingress(ports);
                let ntx =
                    self.run_pipeline(self.cur ^ 1, &h.staged, half..h.staged.len(), now, ntx);
                (staged, ntx)
            }
            None => (self.table.stage_ingress(ports), 0),
        };
        let mut end = now;
        if let Some(h) = held {
            self.transmit(self.cur ^ 1, h.staged.len(), ntx);
            end = self.record(h.rx_ns, now, h.staged.len());
        }
        if !staged.is_empty() {
            self.table.stage_egress(&staged);
            self.held = Some(Held { staged, rx_ns: now });
            self.cur ^= 1;
        }
        end
    }

    /// Records `n` packets received at `rx_ns` and processed from `start` until now in the
    /// latency histograms; returns now.
    fn record(&mut self, rx_ns: u64, start: u64, n: usize) -> u64 {
        let end = self.now_ns();
        if n > 0 {
            let per_packet = end.saturating_sub(start) / n as u64;
            self.hist.saturating_record_n(per_packet.max(1), n as u64);
            self.burst_hist
                .saturating_record_n(end.saturating_sub(rx_ns).max(1), n as u64);
        }
        end
    }

    /// Runs the pipeline over packets `range` of the staged burst in `batches[slot]`,
    /// queueing their forwards in `tx` after the `ntx` queued already; returns how many are
    /// queued then.
    fn run_pipeline(
        &mut self,
        slot: usize,
        staged: &Staged,
        range: std::ops::Range<usize>,
        now: u64,
        mut ntx: usize,
    ) -> usize {
        let mut sink = ChannelSink {
            tx: &self.events,
            dropped: 0,
        };
        let Worker {
            table,
            batches,
            totals,
            tx,
            mixer,
            ..
        } = self;
        let batch = &mut batches[slot & 1];
        table.for_each_staged(staged, range, |table, i| {
            let meta = batch.meta(i);
            totals.packets_in += 1;
            totals.bytes_in += u64::from(meta.len);
            if meta.truncated {
                count_drop(table, totals, meta.port, DropReason::Oversize);
                return;
            }
            let buf = batch.payload_mut(i);
            match pipeline::process(table, meta.port, meta.src, buf, now, &mut sink) {
                Verdict::Forward { out, port, dst } => {
                    tx[ntx] = TxDesc {
                        buf: i as u8,
                        len: meta.len,
                        port,
                        dst,
                        stream: out,
                        sent: false,
                    };
                    ntx += 1;
                }
                Verdict::Drop(r) => totals.drops.count(r),
                Verdict::Mix(r) => mixer.push(r, buf, now),
            }
        });
        self.totals.events_dropped += sink.dropped;
        ntx
    }

    /// Ends the burst of `n` packets in `batches[slot]`: sends the `ntx` queued forwards and
    /// counts what could not be sent.
    fn transmit(&mut self, slot: usize, n: usize, ntx: usize) {
        let sent = self
            .io
            .tx_burst(&mut self.batches[slot & 1], n, &mut self.tx[..ntx]);
        self.totals.packets_forwarded += sent as u64;
        for d in &self.tx[..ntx] {
            if d.sent {
                self.totals.bytes_out += u64::from(d.len);
            } else {
                self.totals.drops.count(DropReason::TxFailed);
                if let Some(s) = self.table.get_mut(d.stream) {
                    s.drops.count(DropReason::TxFailed);
                }
            }
        }
    }

    /// Sends every played packet that is due, in bursts through the batch (which the received
    /// burst no longer uses), and retires finished players with a `PlayDone` event.
    fn run_players(&mut self, now: u64) {
        let Worker {
            players,
            table,
            io,
            batches,
            cur,
            tx,
            totals,
            events,
            play_buf,
            cfg,
            ..
        } = self;
        let mut sink = ChannelSink {
            tx: events,
            dropped: 0,
        };
        let batch = &mut batches[*cur & 1];
        let burst = cfg.burst_size.clamp(1, BURST_SIZE_MAX);
        let mut ntx = 0;
        let mut next = u64::MAX;
        let mut i = 0;
        while i < players.len() {
            let p = &mut players[i];
            let Some(s) = table.get_mut(p.stream) else {
                players.swap_remove(i);
                continue;
            };
            // At most two packets per player per pass: catching up, never bursting.
            let mut finished = false;
            for _ in 0..2 {
                match p.next_packet(s, &mut play_buf[..], now) {
                    Step::Packet(len) => {
                        let Some(dst) = s.remote else {
                            s.drops.count(DropReason::NoRemote);
                            totals.drops.count(DropReason::NoRemote);
                            continue;
                        };
                        if !io.load(batch, ntx, &play_buf[..len]) {
                            s.drops.count(DropReason::TxFailed);
                            totals.drops.count(DropReason::TxFailed);
                            continue;
                        }
                        tx[ntx] = TxDesc {
                            buf: ntx as u8,
                            len: len as u16,
                            port: s.port,
                            dst,
                            stream: p.stream,
                            sent: false,
                        };
                        ntx += 1;
                        if ntx == burst {
                            send_played(io, batch, &mut tx[..ntx], table, totals);
                            ntx = 0;
                            // `s` was reborrowed by the send; the player continues next pass.
                            break;
                        }
                    }
                    Step::NotDue => break,
                    Step::Finished => {
                        finished = true;
                        break;
                    }
                }
            }
            let p = &mut players[i];
            if finished {
                if let Some(s) = table.get_mut(p.stream) {
                    s.playing = false;
                }
                sink.emit(MediaEvent::PlayDone {
                    relay: p.relay,
                    side: p.side,
                    id: p.id,
                });
                players.swap_remove(i);
                continue;
            }
            next = next.min(p.next_due_ns);
            i += 1;
        }
        if ntx > 0 {
            send_played(io, batch, &mut tx[..ntx], table, totals);
        }
        self.next_play_ns = next;
        self.totals.events_dropped += sink.dropped;
    }

    /// Runs the conference ticks that are due, sending mixed packets in bursts.
    fn run_mixer(&mut self, now: u64) {
        let Worker {
            mixer,
            table,
            io,
            batches,
            cur,
            tx,
            totals,
            events,
            cfg,
            ..
        } = self;
        let batch = &mut batches[*cur & 1];
        let mut sink = ChannelSink {
            tx: events,
            dropped: 0,
        };
        let mut out = MixSend {
            io,
            batch,
            tx: &mut tx[..],
            ntx: 0,
            burst: cfg.burst_size.clamp(1, BURST_SIZE_MAX),
            totals,
        };
        mixer.run(now, table, &mut sink, &mut out);
        out.flush(table);
        self.totals.events_dropped += sink.dropped;
    }

    fn conference(
        &mut self,
        conf: ConfId,
        op: ConfOp,
        now: u64,
    ) -> Result<ConfReply, CommandError> {
        let stream = |relays: &HashMap<RelayId, RelayStreams>, relay: RelayId, side: Side| {
            relays
                .get(&relay)
                .map(|r| r.rtp[side.index()])
                .ok_or(CommandError::NotFound(relay))
        };
        match op {
            ConfOp::Join { member, options } => {
                if !self.io.can_generate() {
                    return Err(CommandError::Unsupported(self.io.kind()));
                }
                let idx = stream(&self.relays, member.relay, member.side)?;
                self.mixer
                    .join(conf, options, &member, idx, &mut self.table, now)?;
                Ok(ConfReply::Done)
            }
            ConfOp::Update {
                relay,
                side,
                update,
            } => {
                let idx = stream(&self.relays, relay, side)?;
                self.mixer.update(conf, idx, &update, &mut self.table)?;
                Ok(ConfReply::Done)
            }
            ConfOp::Leave { relay, side } => {
                let idx = stream(&self.relays, relay, side)?;
                Ok(if self.mixer.leave(conf, idx, &mut self.table)? {
                    ConfReply::Ended
                } else {
                    ConfReply::Done
                })
            }
            ConfOp::Record(tap) => {
                self.mixer.record(conf, tap, &mut self.table)?;
                Ok(ConfReply::Done)
            }
            ConfOp::Beep(b) => {
                self.mixer.beep(conf, b, &mut self.table)?;
                Ok(ConfReply::Done)
            }
            ConfOp::Roster => Ok(ConfReply::Roster(self.mixer.roster(conf)?)),
        }
    }

    fn play(
        &mut self,
        relay: RelayId,
        side: Side,
        media: Arc<crate::player::PlayMedia>,
        loops: u32,
        id: u64,
        now: u64,
    ) -> Result<(), CommandError> {
        if !self.io.can_generate() {
            return Err(CommandError::Unsupported(self.io.kind()));
        }
        media.validate()?;
        let r = *self
            .relays
            .get(&relay)
            .ok_or(CommandError::NotFound(relay))?;
        let idx = r.rtp[side.index()];
        self.stop_play(relay, side);
        let Some(s) = self.table.get_mut(idx) else {
            return Err(CommandError::NotFound(relay));
        };
        s.playing = true;
        self.play_seed = self.play_seed.wrapping_add(0x9e37_79b9);
        let p = Player::new(idx, s, id, media, loops, now, self.play_seed ^ now);
        self.next_play_ns = self.next_play_ns.min(p.next_due_ns);
        self.players.push(p);
        Ok(())
    }

    /// Removes a leg's player; whether there was one.
    fn stop_play(&mut self, relay: RelayId, side: Side) -> bool {
        let Some(pos) = self
            .players
            .iter()
            .position(|p| p.relay == relay && p.side == side)
        else {
            return false;
        };
        let p = self.players.swap_remove(pos);
        if let Some(s) = self.table.get_mut(p.stream) {
            s.playing = false;
        }
        true
    }

    /// Applies pending commands; the time they take counts as busy. The clock is read only
    /// when there is a command. Returns the clock at the end, or `None` when there was none.
    fn apply_commands(&mut self) -> Option<u64> {
        let mut started = None;
        for _ in 0..COMMANDS_PER_LOOP {
            match self.commands.try_recv() {
                Ok(cmd) => {
                    let now = self.now_ns();
                    started.get_or_insert(now);
                    self.apply(cmd, now);
                    if self.stop {
                        break;
                    }
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.stop = true;
                    break;
                }
            }
        }
        let t0 = started?;
        let end = self.now_ns();
        self.totals.busy_ns += end.saturating_sub(t0);
        Some(end)
    }

    fn apply(&mut self, cmd: MediaCommand, now: u64) {
        // A reply whose receiver gave up (timed out) is simply discarded.
        match cmd {
            MediaCommand::CreateRelay { spec, reply } => {
                let _ = reply.try_send(self.create_relay(&spec, now));
            }
            MediaCommand::UpdateLeg {
                relay,
                side,
                update,
                reply,
            } => {
                let _ = reply.try_send(self.update_leg(relay, side, update));
            }
            MediaCommand::QueryRelay { relay, reply } => {
                let r = self
                    .relays
                    .get(&relay)
                    .map(|r| self.snapshot(relay, r, now))
                    .ok_or(CommandError::NotFound(relay));
                let _ = reply.try_send(r);
            }
            MediaCommand::DeleteRelay { relay, reply } => {
                let _ = reply.try_send(self.delete_relay(relay, now));
            }
            MediaCommand::Play {
                relay,
                side,
                media,
                loops,
                id,
                reply,
            } => {
                let _ = reply.try_send(self.play(relay, side, media, loops, id, now));
            }
            MediaCommand::StopPlay { relay, side, reply } => {
                let r = if self.relays.contains_key(&relay) {
                    Ok(self.stop_play(relay, side))
                } else {
                    Err(CommandError::NotFound(relay))
                };
                let _ = reply.try_send(r);
            }
            MediaCommand::Record {
                relay,
                side,
                tap,
                reply,
            } => {
                let r = match self.relays.get(&relay) {
                    Some(r) => {
                        self.table.set_tap(r.rtp[side.index()], tap);
                        Ok(())
                    }
                    None => Err(CommandError::NotFound(relay)),
                };
                let _ = reply.try_send(r);
            }
            MediaCommand::Conference { conf, op, reply } => {
                let _ = reply.try_send(self.conference(conf, op, now));
            }
            MediaCommand::Shutdown => self.stop = true,
        }
        self.shared
            .conferences
            .store(self.mixer.conferences() as u64, Ordering::Relaxed);
        self.shared
            .conference_members
            .store(self.mixer.members() as u64, Ordering::Relaxed);
        self.shared
            .streams
            .store(self.table.len() as u64, Ordering::Relaxed);
        self.shared
            .relays
            .store(self.relays.len() as u64, Ordering::Relaxed);
        self.shared
            .players
            .store(self.players.len() as u64, Ordering::Relaxed);
    }

    fn open(
        &mut self,
        ip: IpAddr,
        port: u16,
        opened: &mut Vec<PortHandle>,
    ) -> Result<PortHandle, CommandError> {
        let addr = SocketAddr::new(ip, port);
        match self.io.open_port(addr) {
            Ok(h) => {
                opened.push(h);
                Ok(h)
            }
            Err(e) => Err(CommandError::Open {
                addr,
                reason: e.to_string(),
                in_use: e.is_address_in_use(),
            }),
        }
    }

    fn create_relay(&mut self, spec: &RelaySpec, now: u64) -> Result<(), CommandError> {
        if self.relays.contains_key(&spec.id) {
            return Err(CommandError::Exists(spec.id));
        }
        let needed = spec
            .legs
            .iter()
            .map(|l| 1 + usize::from(l.rtcp_port.is_some()))
            .sum::<usize>();
        if self.table.len() + needed > self.cfg.streams_max {
            return Err(CommandError::Full(self.cfg.streams_max));
        }
        let mut opened = Vec::with_capacity(4);
        let mut handles = [[None; 2]; 2];
        for (i, leg) in spec.legs.iter().enumerate() {
            let r = self
                .open(leg.local_ip, leg.rtp_port, &mut opened)
                .and_then(|rtp| {
                    let rtcp = leg
                        .rtcp_port
                        .map(|p| self.open(leg.local_ip, p, &mut opened))
                        .transpose()?;
                    Ok((rtp, rtcp))
                });
            match r {
                Ok((rtp, rtcp)) => handles[i] = [Some(rtp), rtcp],
                Err(e) => {
                    for h in opened {
                        self.io.close_port(h);
                    }
                    return Err(e);
                }
            }
        }
        let mut rtp = [StreamIdx(0); 2];
        let mut rtcp = [None; 2];
        for (i, (leg, side)) in spec.legs.iter().zip([Side::A, Side::B]).enumerate() {
            let Some(rtp_h) = handles[i][0] else { continue };
            let mut s = Stream::new(rtp_h, spec.id, side, Component::Rtp, now);
            configure_stream(&mut s, spec, leg, leg.remote);
            rtp[i] = self.table.insert(s);
            if let Some(h) = handles[i][1] {
                let mut c = Stream::new(h, spec.id, side, Component::Rtcp, now);
                let remote = leg.rtcp_remote.or(leg
                    .remote
                    .map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1))));
                configure_stream(&mut c, spec, leg, remote);
                c.rewrite = false;
                rtcp[i] = Some(self.table.insert(c));
            }
        }
        // Link: RTP to the other leg's RTP; RTCP (muxed or not) to the other leg's RTCP port,
        // which is its RTP port when that leg muxes.
        for i in 0..2 {
            let o = if spec.echo { i } else { 1 - i };
            let rtcp_out = rtcp[o].unwrap_or(rtp[o]);
            if let Some(s) = self.table.get_mut(rtp[i]) {
                s.peer = rtp[o];
                s.rtcp_peer = rtcp_out;
                s.rtp_sibling = rtp[i];
            }
            if let Some(c) = rtcp[i].and_then(|c| self.table.get_mut(c)) {
                c.peer = rtcp_out;
                c.rtcp_peer = rtcp_out;
                c.rtp_sibling = rtp[i];
            }
        }
        self.relays.insert(spec.id, RelayStreams { rtp, rtcp });
        Ok(())
    }

    fn update_leg(
        &mut self,
        relay: RelayId,
        side: Side,
        update: LegUpdate,
    ) -> Result<(), CommandError> {
        let r = *self
            .relays
            .get(&relay)
            .ok_or(CommandError::NotFound(relay))?;
        let i = side.index();
        if update.echo.is_some() && self.table.get(r.rtp[i]).is_some_and(|s| s.in_conference) {
            // The mixer owns a member's link; echo would cut it from the conference.
            return Err(CommandError::Mix(crate::mixer::MixError::AlreadyMember));
        }
        if let Some(echo) = update.echo {
            // Re-link this leg's streams to themselves or to the other leg (as creation does).
            let o = if echo { i } else { 1 - i };
            let rtcp_out = r.rtcp[o].unwrap_or(r.rtp[o]);
            if let Some(s) = self.table.get_mut(r.rtp[i]) {
                s.peer = r.rtp[o];
                s.rtcp_peer = rtcp_out;
            }
            if let Some(c) = r.rtcp[i].and_then(|c| self.table.get_mut(c)) {
                c.peer = rtcp_out;
                c.rtcp_peer = rtcp_out;
            }
        }
        if let Some(s) = self.table.get_mut(r.rtp[i]) {
            if let Some(remote) = update.remote {
                s.remote = Some(remote);
            }
            if let Some(b) = update.blocked {
                s.blocked = b;
            }
            if let Some(pt) = update.dtmf_pt {
                s.dtmf_pt = pt;
            }
            if let Some(o) = update.opaque {
                s.opaque = o;
            }
        }
        if let Some(c) = r.rtcp[i].and_then(|c| self.table.get_mut(c)) {
            let remote = update.rtcp_remote.or(update
                .remote
                .map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1))));
            if let Some(remote) = remote {
                c.remote = Some(remote);
            }
            if let Some(b) = update.blocked {
                c.blocked = b;
            }
        }
        Ok(())
    }

    fn delete_relay(&mut self, relay: RelayId, now: u64) -> Result<RelaySnapshot, CommandError> {
        let r = self
            .relays
            .remove(&relay)
            .ok_or(CommandError::NotFound(relay))?;
        let snap = self.snapshot(relay, &r, now);
        self.players.retain(|p| p.relay != relay);
        for idx in r.rtp {
            self.mixer.forget_stream(idx, &mut self.table);
        }
        for idx in r.rtp.into_iter().chain(r.rtcp.into_iter().flatten()) {
            if let Some(s) = self.table.remove(idx) {
                self.io.close_port(s.port);
            }
        }
        Ok(snap)
    }

    fn snapshot(&self, relay: RelayId, r: &RelayStreams, now: u64) -> RelaySnapshot {
        let snap = |idx: StreamIdx| self.table.get(idx).map(|s| stream_snapshot(s, now));
        let leg = |i: usize| LegSnapshot {
            rtp: snap(r.rtp[i]).unwrap_or_else(empty_snapshot),
            rtcp: r.rtcp[i].and_then(snap),
        };
        RelaySnapshot {
            id: relay,
            legs: [leg(0), leg(1)],
        }
    }

    fn housekeeping(&mut self, now: u64) {
        self.last_housekeeping_ns = now;
        self.io.housekeeping(now);
        self.sweep_timeouts(now);
        let hist_due = now.saturating_sub(self.last_hist_ns) >= HIST_PUBLISH_NS;
        self.publish(now, hist_due);
    }

    /// Checks a bounded slice of streams, sized so each is visited several times per timeout.
    fn sweep_timeouts(&mut self, now: u64) {
        let Some(timeout) = self.cfg.media_timeout else {
            return;
        };
        let slots = self.table.slots();
        if slots == 0 {
            return;
        }
        let timeout_ns = timeout.as_nanos() as u64;
        let rounds_per_timeout = (timeout_ns / 4 / HOUSEKEEPING_NS).max(1) as usize;
        let per_sweep = slots
            .div_ceil(rounds_per_timeout)
            .clamp(64, 8192)
            .min(slots);
        let mut sink = ChannelSink {
            tx: &self.events,
            dropped: 0,
        };
        for _ in 0..per_sweep {
            self.sweep_cursor = (self.sweep_cursor + 1) % slots;
            let Some(s) = self.table.get_mut(StreamIdx(self.sweep_cursor as u32)) else {
                continue;
            };
            if s.component == Component::Rtp
                && !s.timed_out
                && now.saturating_sub(s.last_rx_ns) >= timeout_ns
            {
                s.timed_out = true;
                sink.emit(MediaEvent::MediaTimeout {
                    relay: s.relay,
                    side: s.side,
                });
            }
        }
        self.totals.events_dropped += sink.dropped;
    }

    fn publish(&mut self, now: u64, hist: bool) {
        let sh = &self.shared;
        let t = &self.totals;
        sh.packets_in.store(t.packets_in, Ordering::Relaxed);
        sh.bytes_in.store(t.bytes_in, Ordering::Relaxed);
        sh.packets_forwarded
            .store(t.packets_forwarded, Ordering::Relaxed);
        sh.bytes_out.store(t.bytes_out, Ordering::Relaxed);
        for (a, v) in sh.drops.iter().zip(t.drops.0.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
        sh.busy_ns.store(t.busy_ns, Ordering::Relaxed);
        sh.wall_ns.store(t.wall_ns, Ordering::Relaxed);
        sh.events_dropped.store(t.events_dropped, Ordering::Relaxed);
        sh.packets_played.store(t.packets_played, Ordering::Relaxed);
        let m = &self.mixer.stats;
        sh.mixed_in.store(m.packets_in, Ordering::Relaxed);
        sh.mixed_out.store(m.packets_out, Ordering::Relaxed);
        sh.mix_concealed
            .store(m.concealed_frames, Ordering::Relaxed);
        sh.mix_late.store(m.late, Ordering::Relaxed);
        let c = self.io.counters();
        sh.rx_calls.store(c.rx_calls, Ordering::Relaxed);
        sh.rx_errors.store(c.rx_errors, Ordering::Relaxed);
        sh.tx_calls.store(c.tx_calls, Ordering::Relaxed);
        sh.tx_raw.store(c.tx_raw, Ordering::Relaxed);
        if hist {
            if let Ok(mut h) = sh.mix_tick_ns.try_lock() {
                let _ = h.add(&self.mixer.tick_ns);
                self.mixer.tick_ns.reset();
            }
            if let Ok(mut h) = sh.burst_ns.try_lock() {
                let _ = h.add(&self.burst_hist);
                self.burst_hist.reset();
            }
            if let Ok(mut h) = sh.processing_ns.try_lock() {
                // Same bounds on both sides: `add` cannot fail or allocate.
                let _ = h.add(&self.hist);
                self.hist.reset();
                self.last_hist_ns = now;
            }
        }
    }
}

/// Where the mixer's packets go: loaded into the batch, sent a burst at a time.
struct MixSend<'a, Io: PacketIo> {
    io: &'a mut Io,
    batch: &'a mut Io::Batch,
    tx: &'a mut [TxDesc],
    ntx: usize,
    burst: usize,
    totals: &'a mut Totals,
}

impl<Io: PacketIo> MixSend<'_, Io> {
    /// Sends what is queued, counted on the streams like played packets.
    fn flush(&mut self, table: &mut StreamTable) {
        if self.ntx > 0 {
            send_played(
                self.io,
                self.batch,
                &mut self.tx[..self.ntx],
                table,
                self.totals,
            );
            self.ntx = 0;
        }
    }
}

impl<Io: PacketIo> MixOut for MixSend<'_, Io> {
    fn send(&mut self, table: &mut StreamTable, idx: StreamIdx, packet: &[u8]) -> bool {
        if self.ntx == self.burst {
            self.flush(table);
        }
        let Some(s) = table.get_mut(idx) else {
            return false;
        };
        let Some(dst) = s.remote else {
            s.drops.count(DropReason::NoRemote);
            self.totals.drops.count(DropReason::NoRemote);
            return false;
        };
        if !self.io.load(self.batch, self.ntx, packet) {
            s.drops.count(DropReason::TxFailed);
            self.totals.drops.count(DropReason::TxFailed);
            return false;
        }
        self.tx[self.ntx] = TxDesc {
            buf: self.ntx as u8,
            len: packet.len() as u16,
            port: s.port,
            dst,
            stream: idx,
            sent: false,
        };
        self.ntx += 1;
        true
    }
}

/// Transmits generated packets loaded into the batch and counts them on their streams.
fn send_played<Io: PacketIo>(
    io: &mut Io,
    batch: &mut Io::Batch,
    tx: &mut [TxDesc],
    table: &mut StreamTable,
    totals: &mut Totals,
) {
    io.tx_burst(batch, tx.len(), tx);
    for d in tx.iter() {
        let Some(s) = table.get_mut(d.stream) else {
            continue;
        };
        if d.sent {
            totals.packets_played += 1;
            totals.bytes_out += u64::from(d.len);
            s.packets_out += 1;
            s.bytes_out += u64::from(d.len);
        } else {
            totals.drops.count(DropReason::TxFailed);
            s.drops.count(DropReason::TxFailed);
        }
    }
}

fn count_drop(table: &mut StreamTable, totals: &mut Totals, port: PortHandle, reason: DropReason) {
    totals.drops.count(reason);
    if let Some(s) = table.by_port(port).and_then(|idx| table.get_mut(idx)) {
        s.packets_in += 1;
        s.drops.count(reason);
    }
}

fn configure_stream(s: &mut Stream, spec: &RelaySpec, leg: &LegSpec, remote: Option<SocketAddr>) {
    s.remote = remote;
    s.policy = spec.policy;
    s.rewrite = spec.rewrite;
    s.clock_rate_hz = leg.clock_rate_hz.max(1);
    s.dtmf_pt = leg.dtmf_pt.unwrap_or(NO_DTMF_PT);
    s.opaque = leg.opaque && s.component == Component::Rtp;
}

fn stream_snapshot(s: &Stream, now: u64) -> StreamSnapshot {
    StreamSnapshot {
        local_port: 0,
        remote: s.remote,
        counters: s.counters(),
        ssrc: s.rx.ssrc(),
        cumulative_lost: s.rx.cumulative_lost(),
        jitter: s.rx.jitter(),
        extended_max_seq: s.rx.extended_max_seq(),
        timed_out: s.timed_out,
        idle_ms: now.saturating_sub(s.last_rx_ns) / 1_000_000,
    }
}

fn empty_snapshot() -> StreamSnapshot {
    StreamSnapshot {
        local_port: 0,
        remote: None,
        counters: Default::default(),
        ssrc: 0,
        cumulative_lost: 0,
        jitter: 0,
        extended_max_seq: 0,
        timed_out: false,
        idle_ms: 0,
    }
}
