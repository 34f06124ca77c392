//! `linkemu`: a slow, lossy link for mgmt's benchmarks and tests, on a
//! kernel without `netem`.
//!
//! It binds one netfilter queue (`iptables ... -j NFQUEUE --queue-num Q`),
//! holds every packet the kernel hands it for a fixed delay and then accepts
//! it, in the order it came (the delay is the same for every packet, so the
//! link never reorders), and drops a given share of the packets instead,
//! each one independently (Bernoulli loss, as netem's `loss P%`). Rules that
//! queue both directions of a link to it add twice the delay to every round
//! trip: `--delay-ms` is one way, RTT/2.
//!
//! Queue packets where they arrive, never on their sender's own way out: a
//! packet held on the OUTPUT hook of the host that sent it still counts
//! against its socket's TCP small-queue budget, which throttles a bulk
//! sender to a couple of packets per delay (58 KB/s at 50 ms, measured).
//! Forwarded packets (a router namespace, `FORWARD -j NFQUEUE`, as
//! bench/link.sh does) or arriving ones (`INPUT -i DEV` on each end, as the
//! slow-link test does) are free of it, as on a real path.
//!
//! Only the packets' metadata crosses to user space (copy range 0), and the
//! queue does not ask for GSO super-packets, so the kernel segments them
//! first and the loss applies to wire-sized packets. Rate limiting is not
//! done here: `tc qdisc ... tbf` on the link does that.
//!
//! What it deliberately does not do: jitter, reordering, duplication,
//! corruption, bursts of loss. A packet the kernel cannot queue (more than
//! `--max-queue` held) is dropped by the kernel, as a full router buffer
//! would (the queue is not "fail open").
//!
//! It prints one line on stdout once the queue is bound (`linkemu: ready
//! ...`, what a caller waits for before adding its rules: without a reader,
//! queued packets are dropped) and its counts on stderr when it ends
//! (SIGTERM or SIGINT): `linkemu: queue Q: N packets, D dropped; ...`,
//! then the same per input interface (the directions of a routed link).
//!
//! Usage: `linkemu --queue Q --delay-ms D [--loss P] [--seed S]
//! [--max-queue N]` (P a fraction: `0.01` is 1%).

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nfq::{Message, Queue, Verdict};

/// Set by SIGTERM and SIGINT; the loop ends at its next wake-up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The command line, validated.
struct Args {
    queue: u16,
    delay: Duration,
    loss: f64,
    seed: u64,
    max_queue: u32,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "linkemu: {why}\nusage: linkemu --queue Q --delay-ms D [--loss P] [--seed S] [--max-queue N]\n\
         (P a fraction of packets, 0 <= P < 1: 0.001 is 0.1%)"
    );
    std::process::exit(2);
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| usage(&format!("{flag}: bad value {v:?}")))
}

fn parse_args() -> Args {
    let mut a = Args {
        queue: u16::MAX,
        delay: Duration::ZERO,
        loss: 0.0,
        seed: 0,
        max_queue: 65536,
    };
    let mut it = std::env::args().skip(1);
    let mut got_delay = false;
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            usage(&format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--queue" => a.queue = num(&flag, &v),
            "--delay-ms" => {
                let ms: f64 = num(&flag, &v);
                if !(0.0..=10_000.0).contains(&ms) {
                    usage(&format!("{flag}: {ms} is not 0..=10000"));
                }
                a.delay = Duration::from_secs_f64(ms / 1000.0);
                got_delay = true;
            }
            "--loss" => {
                a.loss = num(&flag, &v);
                if !(0.0..1.0).contains(&a.loss) {
                    usage(&format!("{flag}: {v} is not in [0, 1)"));
                }
            }
            "--seed" => a.seed = num(&flag, &v),
            "--max-queue" => a.max_queue = num(&flag, &v),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if a.queue == u16::MAX || !got_delay {
        usage("--queue and --delay-ms are required");
    }
    if a.seed == 0 {
        // Not for security: a different drop pattern each run unless --seed.
        a.seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id());
    }
    a
}

/// xorshift64*: enough randomness for independent drops, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The sockets this process has open (the listing's own descriptor is a
/// directory, so it is never among them).
fn open_sockets() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Opens the queue and finds its netlink socket (the one descriptor that
/// `Queue::open` added; nfq does not expose it), which the loop waits on.
fn open_queue(a: &Args) -> std::io::Result<(Queue, RawFd)> {
    let before = open_sockets();
    let mut q = Queue::open()?;
    let new: Vec<RawFd> = open_sockets()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    let [fd] = new[..] else {
        return Err(std::io::Error::other(format!(
            "cannot tell the queue's socket among new descriptors {new:?}"
        )));
    };
    q.bind(a.queue)?;
    q.set_copy_range(a.queue, 0)?;
    q.set_queue_max_len(a.queue, a.max_queue)?;
    q.set_fail_open(a.queue, false)?;
    q.set_recv_gso(a.queue, false)?;
    q.set_nonblocking(true);
    // A large receive buffer: a burst of packets must not be lost between
    // two reads (metadata only: a few hundred bytes each).
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt on our own socket with a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((q, fd))
}

/// Waits until `fd` is readable or `timeout` passes (or a signal comes).
fn wait_readable(fd: RawFd, timeout: Option<Duration>) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd, a valid or null timespec, no signal mask.
    unsafe { libc::ppoll(&mut p, 1, tp, std::ptr::null()) };
}

/// Counts per input interface (its index; 0 for a packet this host sent),
/// which tells the two directions of a routed link apart.
#[derive(Default)]
struct Counts {
    /// (interface, packets seen, packets dropped), in order of first sight.
    by_in: Vec<(u32, u64, u64)>,
    most_held: usize,
}

impl Counts {
    fn count(&mut self, indev: u32, dropped: bool) {
        let i = match self.by_in.iter().position(|e| e.0 == indev) {
            Some(i) => i,
            None => {
                self.by_in.push((indev, 0, 0));
                self.by_in.len() - 1
            }
        };
        if let Some(e) = self.by_in.get_mut(i) {
            e.1 += 1;
            e.2 += u64::from(dropped);
        }
    }
}

fn main() {
    let a = parse_args();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let (mut q, fd) = open_queue(&a).unwrap_or_else(|e| {
        eprintln!(
            "linkemu: cannot bind netfilter queue {}: {e} (hint: run as root, in the network \
             namespace of the rules; /proc/net/netfilter/nfnetlink_queue must exist, else modprobe \
             nfnetlink_queue; another process may hold the queue)",
            a.queue
        );
        std::process::exit(1);
    });
    println!(
        "linkemu: ready: queue {}, delay {:.1} ms one way, loss {}",
        a.queue,
        a.delay.as_secs_f64() * 1000.0,
        a.loss
    );
    let _ = std::io::stdout().flush();

    let mut rng = Rng::new(a.seed);
    let mut held: VecDeque<(Instant, Message)> = VecDeque::new();
    let mut c = Counts::default();
    while !STOP.load(Ordering::SeqCst) {
        // Read everything the kernel has queued.
        loop {
            match q.recv() {
                Ok(mut m) => {
                    let drop = a.loss > 0.0 && rng.next_f64() < a.loss;
                    c.count(m.get_indev(), drop);
                    if drop {
                        m.set_verdict(Verdict::Drop);
                        verdict(&mut q, m);
                    } else {
                        held.push_back((Instant::now() + a.delay, m));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => {
                    eprintln!("linkemu: reading queue {}: {e}", a.queue);
                    std::process::exit(1);
                }
            }
        }
        c.most_held = c.most_held.max(held.len());
        // Release what is due.
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, mut m) = held.pop_front().expect("front checked");
            m.set_verdict(Verdict::Accept);
            verdict(&mut q, m);
        }
        let next = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()));
        // Idle: wake at least once a second to notice a signal.
        wait_readable(fd, Some(next.unwrap_or(Duration::from_secs(1))));
    }
    // Closing the socket drops what is still held; let it through instead.
    for (_, mut m) in held.drain(..) {
        m.set_verdict(Verdict::Accept);
        verdict(&mut q, m);
    }
    let seen: u64 = c.by_in.iter().map(|e| e.1).sum();
    let dropped: u64 = c.by_in.iter().map(|e| e.2).sum();
    let per: Vec<String> = c
        .by_in
        .iter()
        .map(|(i, n, d)| format!("from interface {i}: {n} ({d} dropped)"))
        .collect();
    eprintln!(
        "linkemu: queue {}: {seen} packets, {dropped} dropped; {}; at most {} held at once",
        a.queue,
        per.join(", "),
        c.most_held
    );
}

fn verdict(q: &mut Queue, m: Message) {
    if let Err(e) = q.verdict(m) {
        eprintln!("linkemu: verdict: {e}");
    }
}
