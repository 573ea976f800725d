//! The event loop. Virtual time in microseconds; one binary heap of timed events; jobs in a
//! slab reused as they finish, so a million jobs need memory only for those in flight.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use fedai_protocol::Price;
use fedai_scheduler::{
    select_into, Candidate, Decision, Failure, JobSpec, Policy, Rng, WorkerStats,
};

use crate::report::{Report, WorkerReport};
use crate::scenario::{Arrivals, Dist, PayMode, Scenario};

const US: f64 = 1_000_000.0;

/// Workers tried per job at most (attempts plus capacity refusals).
const MAX_TRIES: usize = 16;

fn us(seconds: f64) -> u64 {
    (seconds.max(0.0) * US) as u64
}

struct Worker {
    group: usize,
    price: Price,
    tokens_per_s: f64,
    first_token_ms: f64,
    max_concurrent: u32,
    slowdown: f64,
    failure_rate: f64,
    hang_rate: f64,
    context: u32,
    alive: bool,
    /// Stops taking jobs (graceful leave) but is not crashed.
    leaving: bool,
    /// Bumped on a crash: events of the old life are ignored.
    epoch: u32,
    in_flight: u32,
    /// What customers see: the last ad.
    ad_in_flight: u32,
    ad_alive: bool,
    /// When its last ad expires (a crashed worker's ad lingers until then).
    ad_expiry: u64,
    busy_us: u128,
    alive_us: u64,
    last_change: u64,
    alive_since: u64,
    completed: u64,
    revenue_msat: u64,
    unpaid_msat: u64,
    /// Serves another model than it advertises.
    cheats: bool,
    /// The relays it reads (bit per relay; all bits when relays are not modelled).
    relays: u64,
}

impl Worker {
    /// Account slot-time up to `now`.
    fn tick(&mut self, now: u64) {
        self.busy_us += self.in_flight as u128 * (now - self.last_change) as u128;
        self.last_change = now;
    }
    fn go_down(&mut self, now: u64) {
        self.tick(now);
        if self.alive {
            self.alive_us += now - self.alive_since;
        }
        self.alive = false;
    }
}

#[derive(Clone, Copy)]
struct Job {
    arrival: u64,
    customer: u32,
    input: u64,
    output: u64,
    attempt: u32,
    /// Attempts that failed for a reason other than a capacity refusal.
    failures: u32,
    tried: [u32; MAX_TRIES],
    /// The current attempt's unique token (events of other attempts, or of an earlier job in
    /// this reused slot, carry another).
    token: u64,
    /// Current worker and when the attempt started.
    worker: u32,
    sent: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    /// The worker answers: result (ok) or error.
    Answer {
        job: u32,
        token: u64,
        worker: u32,
        epoch: u32,
        ok: bool,
    },
    /// The worker's own job timeout frees a hung slot.
    Free {
        worker: u32,
        epoch: u32,
    },
    Refused {
        job: u32,
        token: u64,
        worker: u32,
    },
    Timeout {
        job: u32,
        token: u64,
    },
    AdTick,
    Crash {
        wave: u32,
    },
    Rejoin {
        worker: u32,
    },
    Join {
        worker: u32,
    },
    Leave {
        worker: u32,
    },
    RelayDown {
        relay: u32,
    },
    RelayUp {
        relay: u32,
    },
}

/// Run one scenario to completion.
pub fn run(s: &Scenario) -> Report {
    Sim::new(s).run()
}

struct Sim<'a> {
    s: &'a Scenario,
    rng: Rng,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    workers: Vec<Worker>,
    /// `stats[customer * workers + worker]`.
    stats: Vec<WorkerStats>,
    jobs: Vec<Job>,
    free_jobs: Vec<u32>,
    policy: Policy,
    decision: Decision,
    arrived: u64,
    latencies_ms: Vec<f32>,
    cost_msat: u128,
    failovers: u64,
    refusals: u64,
    timeouts: u64,
    errors: u64,
    dropped_no_worker: u64,
    dropped_exhausted: u64,
    in_system: u64,
    /// Relays up (bit per relay).
    relays_up: u64,
    /// Each customer's relays (bit per relay).
    customer_relays: Vec<u64>,
    /// Answers lost because every relay of their worker was down.
    lost_answers: u64,
    /// Jobs each customer got answered.
    customer_jobs: Vec<u64>,
    /// `caught[customer * workers + worker]`: the customer caught that cheater.
    caught: Vec<bool>,
    /// Customer jobs until each (customer, cheater) catch.
    detection_jobs: Vec<u64>,
    cheated_jobs: u64,
    cheated_msat: u128,
    spot_checks: u64,
    spot_cost_msat: u128,
    false_accusations: u64,
}

impl<'a> Sim<'a> {
    fn new(s: &'a Scenario) -> Self {
        let mut rng = Rng::new(s.seed);
        let mut workers = Vec::new();
        for (gi, g) in s.workers.iter().enumerate() {
            for _ in 0..g.count {
                let spread = 1.0 + g.speed_spread * (2.0 * rng.next_f64() - 1.0);
                workers.push(Worker {
                    group: gi,
                    price: Price {
                        model: "sim".into(),
                        base_msat: g.base_msat,
                        per_1k_input_msat: g.per_1k_input_msat,
                        per_1k_output_msat: g.per_1k_output_msat,
                    },
                    tokens_per_s: (g.tokens_per_s * spread).max(0.1),
                    first_token_ms: g.first_token_ms,
                    max_concurrent: g.max_concurrent,
                    slowdown: g.slowdown_per_slot,
                    failure_rate: g.failure_rate,
                    hang_rate: g.hang_rate,
                    context: g.context_length,
                    alive: false,
                    leaving: false,
                    epoch: 0,
                    in_flight: 0,
                    ad_in_flight: 0,
                    ad_alive: false,
                    ad_expiry: 0,
                    busy_us: 0,
                    alive_us: 0,
                    last_change: 0,
                    alive_since: 0,
                    completed: 0,
                    revenue_msat: 0,
                    unpaid_msat: 0,
                    cheats: g.cheats,
                    relays: u64::MAX,
                });
            }
        }
        let c = &s.client;
        let mut policy = Policy::new(c.strategy);
        policy.top_n = c.top_n.max(1);
        policy.margin = c.margin;
        let n = workers.len();
        // Relays: who reads where (drawn once, from the scenario's seed).
        let r = &s.relays;
        let modelled = r.count > 1;
        let count = r.count.clamp(1, 64);
        let draw_set = |k: u32, rng: &mut Rng| -> u64 {
            let mut m = 0u64;
            let k = k.clamp(1, count);
            while m.count_ones() < k {
                m |= 1 << rng.below(count as usize);
            }
            m
        };
        let mut customer_relays = vec![u64::MAX; c.customers as usize];
        if modelled {
            for w in &mut workers {
                w.relays = draw_set(r.per_worker, &mut rng);
            }
            for m in &mut customer_relays {
                *m = draw_set(r.per_customer, &mut rng);
            }
        }
        let customers = c.customers as usize;
        let mut sim = Self {
            s,
            rng,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            stats: vec![WorkerStats::default(); n * c.customers as usize],
            workers,
            jobs: Vec::new(),
            free_jobs: Vec::new(),
            policy,
            decision: Decision::default(),
            arrived: 0,
            latencies_ms: Vec::with_capacity(s.jobs.min(10_000_000) as usize),
            cost_msat: 0,
            failovers: 0,
            refusals: 0,
            timeouts: 0,
            errors: 0,
            dropped_no_worker: 0,
            dropped_exhausted: 0,
            in_system: 0,
            relays_up: u64::MAX,
            customer_relays,
            lost_answers: 0,
            customer_jobs: vec![0; customers],
            caught: vec![false; customers * n],
            detection_jobs: Vec::new(),
            cheated_jobs: 0,
            cheated_msat: 0,
            spot_checks: 0,
            spot_cost_msat: 0,
            false_accusations: 0,
        };
        for f in &s.relays.failures {
            sim.at(us(f.at_s), Ev::RelayDown { relay: f.relay });
            if let Some(after) = f.recover_after_s {
                sim.at(us(f.at_s + after), Ev::RelayUp { relay: f.relay });
            }
        }
        for w in 0..n {
            let g = &s.workers[sim.workers[w].group];
            sim.at(us(g.join_at_s), Ev::Join { worker: w as u32 });
            if let Some(l) = g.leave_at_s {
                sim.at(us(l), Ev::Leave { worker: w as u32 });
            }
        }
        for (i, c) in s.crashes.iter().enumerate() {
            sim.at(us(c.at_s), Ev::Crash { wave: i as u32 });
        }
        sim.at(0, Ev::Arrival);
        sim.at(us(s.client.ad_interval_s), Ev::AdTick);
        sim
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn draw(&mut self, d: &Dist) -> u64 {
        match *d {
            Dist::Fixed { value } => value,
            Dist::Uniform { min, max } => {
                min + (self.rng.next_f64() * (max.saturating_sub(min) + 1) as f64) as u64
            }
            Dist::Lognormal { median, sigma, max } => {
                // Box–Muller.
                let (u1, u2) = (1.0 - self.rng.next_f64(), self.rng.next_f64());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                ((median * (sigma * z).exp()) as u64).clamp(1, max)
            }
        }
    }

    fn next_arrival_gap(&mut self) -> u64 {
        let rate = match self.s.workload.arrivals {
            Arrivals::Poisson { rate_per_s } => rate_per_s,
            Arrivals::Bursty {
                rate_per_s,
                burst_factor,
                on_s,
                off_s,
            } => {
                let period = on_s + off_s;
                let phase = (self.now as f64 / US) % period.max(1e-9);
                if phase < on_s {
                    rate_per_s * burst_factor
                } else {
                    rate_per_s
                }
            }
        };
        us(self.rng.exp(1.0 / rate))
    }

    fn run(mut self) -> Report {
        while let Some(Reverse((t, _, ev))) = self.heap.pop() {
            self.now = t;
            match ev {
                Ev::Arrival => self.on_arrival(),
                Ev::Answer {
                    job,
                    token,
                    worker,
                    epoch,
                    ok,
                } => self.on_answer(job, token, worker, epoch, ok),
                Ev::Free { worker, epoch } => {
                    let w = &mut self.workers[worker as usize];
                    if w.epoch == epoch {
                        w.tick(t);
                        w.in_flight -= 1;
                    }
                }
                Ev::Refused { job, token, worker } => {
                    if self.jobs[job as usize].token == token {
                        self.refusals += 1;
                        self.fail(job, worker, Failure::Busy);
                    }
                }
                Ev::Timeout { job, token } => {
                    let j = self.jobs[job as usize];
                    if j.token == token {
                        self.timeouts += 1;
                        self.fail(job, j.worker, Failure::Timeout);
                    }
                }
                Ev::AdTick => {
                    let ttl = us(self.s.client.ad_ttl_s);
                    for w in &mut self.workers {
                        if w.alive && !w.leaving {
                            w.ad_in_flight = w.in_flight;
                            w.ad_alive = true;
                            w.ad_expiry = t + ttl;
                        } else if t >= w.ad_expiry {
                            // Crashed: nobody re-publishes, the old ad stands until it expires.
                            w.ad_alive = false;
                        }
                    }
                    if self.arrived < self.s.jobs || self.in_system > 0 {
                        self.at(t + us(self.s.client.ad_interval_s), Ev::AdTick);
                    }
                }
                Ev::Crash { wave } => self.on_crash(wave as usize),
                Ev::Rejoin { worker } | Ev::Join { worker } => {
                    let w = &mut self.workers[worker as usize];
                    if !w.alive && !w.leaving {
                        w.alive = true;
                        w.alive_since = t;
                        w.last_change = t;
                        w.in_flight = 0;
                        // Its first ad goes out at once.
                        w.ad_alive = true;
                        w.ad_in_flight = 0;
                        w.ad_expiry = t + us(self.s.client.ad_ttl_s);
                    }
                }
                Ev::Leave { worker } => {
                    let w = &mut self.workers[worker as usize];
                    w.leaving = true;
                    w.ad_alive = false;
                }
                Ev::RelayDown { relay } => self.relays_up &= !(1u64 << (relay % 64)),
                Ev::RelayUp { relay } => self.relays_up |= 1u64 << (relay % 64),
            }
        }
        let end = self.now;
        for w in &mut self.workers {
            w.go_down(end);
        }
        self.report(end)
    }

    fn on_arrival(&mut self) {
        self.arrived += 1;
        self.in_system += 1;
        let wl = &self.s.workload;
        let (di, doo) = (wl.input_tokens.clone(), wl.output_tokens.clone());
        let job = Job {
            arrival: self.now,
            customer: self.rng.below(self.s.client.customers as usize) as u32,
            input: self.draw(&di),
            output: self.draw(&doo),
            attempt: 0,
            failures: 0,
            tried: [u32::MAX; MAX_TRIES],
            token: 0,
            worker: u32::MAX,
            sent: 0,
        };
        let id = match self.free_jobs.pop() {
            Some(id) => {
                self.jobs[id as usize] = job;
                id
            }
            None => {
                self.jobs.push(job);
                (self.jobs.len() - 1) as u32
            }
        };
        self.dispatch(id);
        if self.arrived < self.s.jobs {
            let gap = self.next_arrival_gap();
            self.at(self.now + gap, Ev::Arrival);
        }
    }

    /// Whether `worker` can be reached at all: one of its relays is up (a customer connects to
    /// the relays its ad names).
    fn reachable(&self, worker: usize) -> bool {
        self.workers[worker].relays & self.relays_up != 0
    }

    /// The scheduler's pick for `customer` among the workers it can see, `tried` excluded —
    /// exactly as the client chooses.
    fn choose(&mut self, customer: u32, spec: &JobSpec, tried: &[u32]) -> Option<usize> {
        let n = self.workers.len();
        let base = customer as usize * n;
        // What this customer can see: a worker with an ad on a live relay it is on — or, with
        // synced relays, on any live relay while it is on one.
        let mine = self.customer_relays[customer as usize] & self.relays_up;
        let synced = self.s.relays.synced;
        let up = self.relays_up;
        let stats = &self.stats;
        let candidates: Vec<Candidate> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let seen = if synced {
                    mine != 0 && w.relays & up != 0
                } else {
                    w.relays & mine != 0
                };
                Candidate {
                    price: Some(&w.price),
                    quote_msat: None,
                    context_length: w.context,
                    max_concurrent: w.max_concurrent,
                    in_flight: w.ad_in_flight,
                    healthy: w.ad_alive && seen,
                    encryption: true,
                    excluded: tried.contains(&(i as u32)),
                    stats: Some(&stats[base + i]),
                    speed_hint_tps: None,
                }
            })
            .collect();
        select_into(
            &mut self.decision,
            &candidates,
            spec,
            &self.policy,
            self.now / 1_000,
            &mut self.rng,
        );
        self.decision.chosen_index()
    }

    fn spec(&self, j: &Job) -> JobSpec {
        JobSpec {
            input_tokens: j.input,
            output_tokens: j.output,
            max_price_msat: self.s.workload.max_price_msat,
            needs_encryption: false,
        }
    }

    /// Choose a worker with the scheduler, exactly as the client does, and send the attempt.
    fn dispatch(&mut self, id: u32) {
        let j = self.jobs[id as usize];
        let spec = self.spec(&j);
        let Some(wi) = self.choose(j.customer, &spec, &j.tried[..j.attempt as usize]) else {
            if j.attempt == 0 {
                self.dropped_no_worker += 1;
            } else {
                self.dropped_exhausted += 1;
            }
            self.finish_job(id);
            return;
        };
        if j.attempt > 0 {
            self.failovers += 1;
        }
        let attempt = j.attempt;
        self.seq += 1;
        let token = self.seq;
        {
            let jm = &mut self.jobs[id as usize];
            jm.token = token;
            jm.tried[attempt as usize] = wi as u32;
            jm.worker = wi as u32;
            jm.sent = self.now;
        }
        let rtt = (self.s.client.rtt_ms * 1_000.0) as u64;
        let timeout = us(self.s.client.timeout_s);
        self.at(self.now + timeout, Ev::Timeout { job: id, token });
        let w = &self.workers[wi];
        if !w.alive || w.leaving || !self.reachable(wi) {
            // A stale ad, or no relay to it: nobody answers; the timeout above fires.
            return;
        }
        if w.in_flight >= w.max_concurrent {
            self.at(
                self.now + rtt,
                Ev::Refused {
                    job: id,
                    token,
                    worker: wi as u32,
                },
            );
            return;
        }
        let pay = if self.s.payment.mode == PayMode::Before {
            (self.s.payment.before_latency_ms * 1_000.0) as u64
        } else {
            0
        };
        let w = &mut self.workers[wi];
        w.tick(self.now);
        w.in_flight += 1;
        let slow = 1.0 + w.slowdown * (w.in_flight - 1) as f64;
        let gen_s = j.output as f64 / w.tokens_per_s * slow;
        let service = us(w.first_token_ms / 1_000.0 + gen_s);
        let (fr, hr, epoch) = (w.failure_rate, w.hang_rate, w.epoch);
        let r = self.rng.next_f64();
        if r < hr {
            // Never answers; the worker's own timeout frees the slot much later.
            self.at(
                self.now + rtt + pay + timeout * 2,
                Ev::Free {
                    worker: wi as u32,
                    epoch,
                },
            );
            return;
        }
        let ok = r >= hr + fr;
        let took = if ok {
            service
        } else {
            (service as f64 * self.rng.next_f64()) as u64
        };
        self.at(
            self.now + rtt + pay + took,
            Ev::Answer {
                job: id,
                token,
                worker: wi as u32,
                epoch,
                ok,
            },
        );
    }

    fn on_answer(&mut self, id: u32, token: u64, worker: u32, epoch: u32, ok: bool) {
        let now = self.now;
        {
            let w = &mut self.workers[worker as usize];
            if w.epoch != epoch {
                return; // crashed since: that answer never happened
            }
            w.tick(now);
            w.in_flight -= 1;
        }
        let j = self.jobs[id as usize];
        if j.token != token {
            return; // the customer already gave up on this attempt
        }
        if !self.reachable(worker as usize) {
            // Every relay of the worker is down: the answer reaches nobody; the customer's
            // timeout fires.
            self.lost_answers += 1;
            return;
        }
        if !ok {
            self.errors += 1;
            self.fail(id, worker, Failure::Error);
            return;
        }
        let n = self.workers.len();
        let w = &mut self.workers[worker as usize];
        let price = match self.s.payment.mode {
            PayMode::Free => 0,
            _ => w.price.cost_msat(j.input, j.output),
        };
        w.completed += 1;
        if self.s.payment.mode == PayMode::After
            && self.rng.chance(self.s.payment.after_default_rate)
        {
            w.unpaid_msat += price;
        } else {
            w.revenue_msat += price;
            self.cost_msat += price as u128;
        }
        let first = w.first_token_ms + self.s.client.rtt_ms;
        let total_ms = (now - j.sent) as f64 / 1_000.0;
        self.stats[j.customer as usize * n + worker as usize].record_success(
            first,
            j.output,
            (total_ms - first).max(1.0),
        );
        self.latencies_ms
            .push(((now - j.arrival) as f64 / 1_000.0) as f32);
        let c = j.customer as usize;
        self.customer_jobs[c] += 1;
        if self.workers[worker as usize].cheats {
            self.cheated_jobs += 1;
            self.cheated_msat += price as u128;
        }
        // (No draw without checks: the other scenarios' random sequences stay as they were.)
        if self.s.client.spot_check > 0.0
            && fedai_scheduler::spot::pick(self.s.client.spot_check, self.rng.next_f64())
        {
            self.spot_check(&j, worker as usize);
        }
        self.finish_job(id);
    }

    /// The customer asks up to two other workers the same (with the same seed) and compares —
    /// `fedai_scheduler::spot`, as the client does. Referees answer at once and hold no slot
    /// (a simplification); their prices are counted.
    fn spot_check(&mut self, j: &Job, worker: usize) {
        self.spot_checks += 1;
        let n = self.workers.len();
        let spec = self.spec(j);
        // Cheaters all serve the same smaller model, so they agree with each other: two of
        // them can outvote an honest worker (counted as `false_accusations`).
        let answer = |w: &Worker| {
            if w.cheats {
                "what the smaller model says"
            } else {
                "the advertised model's answer"
            }
        };
        let mut asked = vec![worker as u32];
        let mut answers = vec![answer(&self.workers[worker])];
        while asked.len() < 3 {
            let Some(r) = self.choose(j.customer, &spec, &asked) else {
                return;
            };
            let w = &self.workers[r];
            if self.s.payment.mode != PayMode::Free {
                self.spot_cost_msat += w.price.cost_msat(j.input, j.output) as u128;
            }
            asked.push(r as u32);
            answers.push(answer(w));
            match fedai_scheduler::spot::verdict(&answers) {
                fedai_scheduler::spot::Verdict::Agree => return,
                fedai_scheduler::spot::Verdict::Undecided => continue,
                fedai_scheduler::spot::Verdict::OddOneOut(k) => {
                    let caught = asked[k] as usize;
                    let c = j.customer as usize;
                    let cooldown = self.policy.cooldown;
                    self.stats[c * n + caught].record_failure(
                        Failure::Mismatch,
                        self.now / 1_000,
                        &cooldown,
                    );
                    if !self.workers[caught].cheats {
                        self.false_accusations += 1;
                    } else if !self.caught[c * n + caught] {
                        self.caught[c * n + caught] = true;
                        self.detection_jobs.push(self.customer_jobs[c]);
                    }
                    return;
                }
            }
        }
    }

    /// An attempt failed: record it, put the worker in cooldown, fail over or drop.
    fn fail(&mut self, id: u32, worker: u32, f: Failure) {
        let n = self.workers.len();
        let j = self.jobs[id as usize];
        let cooldown = self.policy.cooldown;
        self.stats[j.customer as usize * n + worker as usize].record_failure(
            f,
            self.now / 1_000,
            &cooldown,
        );
        let jm = &mut self.jobs[id as usize];
        jm.attempt += 1;
        // A capacity refusal comes back at once and costs the customer nothing but a round
        // trip: it does not use up an attempt (the client's rule too), only a try.
        if f != Failure::Busy {
            jm.failures += 1;
        }
        if jm.failures >= self.s.client.max_attempts || jm.attempt as usize >= MAX_TRIES {
            self.dropped_exhausted += 1;
            self.finish_job(id);
        } else {
            self.dispatch(id);
        }
    }

    fn finish_job(&mut self, id: u32) {
        // Pending events of this job no longer match.
        self.jobs[id as usize].token = 0;
        self.free_jobs.push(id);
        self.in_system -= 1;
    }

    fn on_crash(&mut self, wave: usize) {
        let c = self.s.crashes[wave].clone();
        let now = self.now;
        for i in 0..self.workers.len() {
            if self.workers[i].alive && self.rng.chance(c.fraction) {
                let w = &mut self.workers[i];
                w.go_down(now);
                w.epoch += 1;
                w.in_flight = 0;
                // Its last ad stays up until it expires: customers still see it.
                if let Some(after) = c.rejoin_after_s {
                    self.at(now + us(after), Ev::Rejoin { worker: i as u32 });
                }
            }
        }
    }

    fn report(mut self, end: u64) -> Report {
        self.latencies_ms.sort_by(f32::total_cmp);
        let pct = |p: f64| -> f64 {
            let l = &self.latencies_ms;
            if l.is_empty() {
                return 0.0;
            }
            l[((l.len() - 1) as f64 * p).round() as usize] as f64
        };
        let completed = self.latencies_ms.len() as u64;
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| WorkerReport {
                id: i as u32,
                group: self.s.workers[w.group].name.clone(),
                completed: w.completed,
                utilisation: if w.alive_us == 0 {
                    0.0
                } else {
                    w.busy_us as f64 / (w.alive_us as f64 * w.max_concurrent as f64)
                },
                revenue_msat: w.revenue_msat,
                unpaid_msat: w.unpaid_msat,
            })
            .collect();
        Report {
            scenario: self.s.name.clone(),
            seed: self.s.seed,
            jobs: self.arrived,
            completed,
            dropped: self.dropped_no_worker + self.dropped_exhausted,
            dropped_no_worker: self.dropped_no_worker,
            dropped_after_failover: self.dropped_exhausted,
            drop_rate: if self.arrived == 0 {
                0.0
            } else {
                (self.dropped_no_worker + self.dropped_exhausted) as f64 / self.arrived as f64
            },
            failovers: self.failovers,
            refusals_busy: self.refusals,
            timeouts: self.timeouts,
            errors: self.errors,
            latency_p50_ms: pct(0.50),
            latency_p95_ms: pct(0.95),
            latency_p99_ms: pct(0.99),
            cost_per_request_msat: if completed == 0 {
                0.0
            } else {
                self.cost_msat as f64 / completed as f64
            },
            simulated_s: end as f64 / US,
            workers,
            lost_answers: self.lost_answers,
            cheated_jobs: self.cheated_jobs,
            cheated_msat: self.cheated_msat.min(u64::MAX as u128) as u64,
            spot_checks: self.spot_checks,
            spot_cost_msat: self.spot_cost_msat.min(u64::MAX as u128) as u64,
            cheater_pairs: self.s.client.customers as u64
                * self.workers.iter().filter(|w| w.cheats).count() as u64,
            detections: self.detection_jobs.len() as u64,
            detection_jobs_p50: quantile(&mut self.detection_jobs, 0.5),
            detection_jobs_p90: quantile(&mut self.detection_jobs, 0.9),
            false_accusations: self.false_accusations,
        }
    }
}

/// The `p` quantile (nearest rank) of `v`, sorted in place; 0 when empty.
fn quantile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64
}
