//! Link delay, jitter and loss on the lab's internet links.
//!
//! Loss is an nftables rule (`numgen random`) in the internet namespace. Delay
//! uses `tc netem` where the kernel has it; where it does not (these machines),
//! packets crossing the internet namespace are queued to userspace with
//! NFQUEUE and a delayer thread gives each its verdict once its time is up
//! (verdicts may be given out of order, so jitter can reorder, as with netem).
//! With netem, loss is netem's too.

use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::netns;

/// The shape of one link, applied in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkShape {
    /// One-way delay added to every packet crossing the link.
    pub delay: Duration,
    /// Each packet's delay is drawn uniformly from `delay ± jitter`.
    pub jitter: Duration,
    /// Percentage of packets dropped, 0 to 100.
    pub loss_percent: f64,
}

impl LinkShape {
    pub fn delay_ms(ms: u64) -> Self {
        LinkShape {
            delay: Duration::from_millis(ms),
            ..Default::default()
        }
    }

    pub fn is_neutral(&self) -> bool {
        self.delay.is_zero() && self.jitter.is_zero() && self.loss_percent <= 0.0
    }

    fn sample_delay(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.delay;
        }
        let j = self.jitter.as_secs_f64();
        let offset = rand::Rng::gen_range(&mut rand::thread_rng(), -j..=j);
        Duration::from_secs_f64((self.delay.as_secs_f64() + offset).max(0.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DelayBackend {
    Netem,
    Nfqueue,
}

/// Does this kernel have `sch_netem`? Tried on a throwaway dummy link inside
/// `ns`, so nothing outside the lab is touched.
pub fn netem_available(ns: &str) -> bool {
    let probe = || -> Result<()> {
        netns::run(
            "ip",
            &["-n", ns, "link", "add", "netemprobe", "type", "dummy"],
        )?;
        let r = netns::run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                "netemprobe",
                "root",
                "netem",
                "delay",
                "1ms",
            ],
        );
        let _ = netns::run("ip", &["-n", ns, "link", "del", "netemprobe"]);
        r.map(|_| ())
    };
    probe().is_ok()
}

/// The netem command for one side of a link.
pub fn netem_args(dev: &str, shape: &LinkShape) -> Vec<String> {
    let mut args: Vec<String> = ["tc", "qdisc", "replace", "dev", dev, "root", "netem"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !shape.delay.is_zero() || !shape.jitter.is_zero() {
        args.push("delay".into());
        args.push(format!("{}us", shape.delay.as_micros()));
        if !shape.jitter.is_zero() {
            args.push(format!("{}us", shape.jitter.as_micros()));
        }
    }
    if shape.loss_percent > 0.0 {
        args.push("loss".into());
        args.push(format!("{}%", shape.loss_percent));
    }
    args
}

/// The nftables loss rules for the internet namespace: per link, on the way
/// in from the link (forward) and on the way out to it (postrouting), so a
/// packet is dropped with probability `loss` at each crossing of the link.
pub fn loss_rules(links: &[(String, u16, LinkShape)]) -> String {
    let mut forward = String::new();
    let mut post = String::new();
    for (dev, _, shape) in links {
        if shape.loss_percent > 0.0 {
            let threshold = (shape.loss_percent * 100.0).round() as u32;
            forward.push_str(&format!(
                "    iifname \"{dev}\" numgen random mod 10000 < {threshold} drop\n"
            ));
            post.push_str(&format!(
                "    oifname \"{dev}\" numgen random mod 10000 < {threshold} drop\n"
            ));
        }
    }
    format!(
        "table inet bitpunch_links {{\n  chain forward {{ type filter hook forward priority filter; policy accept;\n{forward}  }}\n  chain postrouting {{ type filter hook postrouting priority filter; policy accept;\n{post}  }}\n}}\n"
    )
}

/// The queueing rules for the delayer, as an `iptables-restore` script for
/// the mangle table. The kernel here has the xtables NFQUEUE target but not
/// nftables' own `queue` expression (CONFIG_NFT_QUEUE), so iptables-nft adds
/// them to nftables through its compat layer. Queue number = link number.
pub fn queue_rules(links: &[(String, u16, LinkShape)]) -> String {
    let mut script = String::from("*mangle\n:FORWARD ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    for (dev, queue, shape) in links {
        if !shape.delay.is_zero() || !shape.jitter.is_zero() {
            script.push_str(&format!(
                "-A FORWARD -i {dev} -j NFQUEUE --queue-num {queue}\n"
            ));
            script.push_str(&format!(
                "-A POSTROUTING -o {dev} -j NFQUEUE --queue-num {queue}\n"
            ));
        }
    }
    script.push_str("COMMIT\n");
    script
}

struct Held {
    due: Instant,
    seq: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The userspace delayer: one thread in the internet namespace serving every
/// link's queue. Stops (and stops delaying) when dropped.
pub struct Delayer {
    shapes: Arc<Mutex<HashMap<u16, LinkShape>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Delayer {
    pub fn start(ns: &str, queues: &[u16]) -> Result<Delayer> {
        let shapes: Arc<Mutex<HashMap<u16, LinkShape>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns_name = ns.to_string();
        let queues = queues.to_vec();
        let thread_shapes = shapes.clone();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("delayer-{ns}"))
            .spawn(move || {
                let opened = (|| -> Result<nfq::Queue> {
                    netns::enter(&ns_name)?;
                    let mut queue = nfq::Queue::open().context("open NFQUEUE netlink socket")?;
                    for &q in &queues {
                        queue.bind(q).with_context(|| format!("bind NFQUEUE {q}"))?;
                        // The verdict needs only the packet id, not the payload.
                        queue.set_copy_range(q, 64)?;
                        queue.set_queue_max_len(q, 16 * 1024)?;
                    }
                    queue.set_nonblocking(true);
                    Ok(queue)
                })();
                let mut queue = match opened {
                    Ok(q) => {
                        let _ = ready_tx.send(Ok(()));
                        q
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                run_delayer(&mut queue, &thread_shapes, &thread_stop);
            })?;
        ready_rx.recv().context("delayer thread died")??;
        Ok(Delayer {
            shapes,
            stop,
            thread: Some(thread),
        })
    }

    pub fn set_shape(&self, queue: u16, shape: LinkShape) {
        crate::clock::lock(&self.shapes).insert(queue, shape);
    }
}

fn run_delayer(queue: &mut nfq::Queue, shapes: &Mutex<HashMap<u16, LinkShape>>, stop: &AtomicBool) {
    let mut held = BinaryHeap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(msg) => {
                    let shape = crate::clock::lock(shapes)
                        .get(&msg.get_queue_num())
                        .copied()
                        .unwrap_or_default();
                    seq += 1;
                    held.push(Held {
                        due: Instant::now() + shape.sample_delay(),
                        seq,
                        msg,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "NFQUEUE receive failed");
                    break;
                }
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|h: &Held| h.due <= now) {
            let h = held.pop().expect("peeked");
            // Message's default verdict is accept.
            if let Err(e) = queue.verdict(h.msg) {
                tracing::warn!(error = %e, "NFQUEUE verdict failed");
            }
        }
        // The netlink socket is not exposed for poll(), so wait in short
        // steps; 200 µs is far below any delay worth emulating.
        let next = held
            .peek()
            .map(|h| h.due.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(1));
        std::thread::sleep(next.min(Duration::from_micros(200)));
    }
    // Release whatever is still held, so nothing waits on a dead delayer.
    while let Some(h) = held.pop() {
        let _ = queue.verdict(h.msg);
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
