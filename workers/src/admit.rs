//! Admission: what the worker does with a job request, as pure functions of the request and a
//! snapshot of the worker (health, models, limits, load, unpaid quotes, payment setup).
//!
//! Two steps, because the work between them costs something: [`screen`] runs first, on what the
//! request says (fresh? a model we serve? within our limits?); then the worker fetches the
//! request's `url`/`event`/`job` inputs and prices the job on its runner (only when
//! [`needs_price`] says the decision depends on it); then [`admit`] decides: decline, ignore,
//! quote (a fed_AI auction), or run — unpaid, or after payment.
//!
//! The driver acquires what the decision assumed (a runner slot, a place among the unpaid
//! quotes) atomically afterwards; losing that race declines the request like a full worker.

use fedai_protocol::{ErrorCode, ModelInfo, PaymentMode};

/// What the request says, and what this process knows of it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// It names this worker (a `p` tag, or an award of our quote): refusals are answered.
    pub directed: bool,
    /// Published before this process started.
    pub stored: bool,
    /// A previous run of this worker accepted it and did not answer it.
    pub resumed: bool,
    /// A previous run of this worker answered it.
    pub answered: bool,
    /// This process has already taken it (it reaches the run path by more than one road).
    pub taken: bool,
    /// The age and expiration check.
    pub fresh: Fresh,
    /// The model asked for (none: the worker's first).
    pub model: Option<&'a str>,
    /// The prompt's size.
    pub prompt_bytes: usize,
    /// `max_tokens` asked for.
    pub max_tokens: Option<u32>,
    /// A bid (NIP-90 `bid`): the most the customer pays.
    pub bid_msat: Option<u64>,
    /// Sent by fed_AI software (marked): a bid there opens an auction.
    pub fedai: bool,
    /// An optional feature the request needs (`json_schema`, …) that this worker's runner
    /// lacks: refused, never run without it.
    pub missing_feature: Option<&'static str>,
}

/// The request's age and expiration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// Within the request window.
    Yes,
    /// Older than the window: ignored.
    TooOld,
    /// Past its `expiration`.
    Expired,
    /// Created further in the future than clocks drift.
    FromFuture,
}

/// The worker as it stands.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Taking jobs (not shutting down).
    pub accepting: bool,
    /// The runner answers.
    pub healthy: bool,
    /// What it serves.
    pub models: &'a [ModelInfo],
    /// Largest prompt taken.
    pub max_prompt_bytes: usize,
    /// `max_tokens` when the request sets none.
    pub default_max_tokens: u32,
    /// Largest `max_tokens` taken.
    pub max_tokens: u32,
    /// How it is paid.
    pub mode: PaymentMode,
    /// It has its own Lightning node (hold invoices: escrow).
    pub escrow: bool,
    /// Runner slots free now.
    pub free_slots: usize,
    /// All runner slots.
    pub slots: u32,
    /// Directed jobs waiting for a slot now.
    pub queued: u32,
    /// Most directed jobs that may wait for a slot.
    pub queue: u32,
    /// Unpaid quotes held by this request's customer.
    pub my_quotes: u32,
    /// Unpaid quotes in all.
    pub all_quotes: u32,
    /// Most unpaid quotes one customer may hold.
    pub quotes_per_customer: u32,
    /// Most unpaid quotes in all.
    pub quotes_total: u32,
}

/// The first step's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened {
    /// Not ours to answer (too old, answered before, …).
    Ignore,
    /// Turned down: an `error` feedback when directed, silence when open.
    Decline(ErrorCode, String),
    /// Go on: fetch the inputs, price the job, then [`admit`].
    Pass {
        /// The model it runs on.
        model: String,
        /// Its `max_tokens`.
        max_tokens: u32,
    },
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do or say.
    Ignore,
    /// Turned down: an `error` feedback when directed, silence when open.
    Decline(ErrorCode, String),
    /// A fed_AI auction: quote this price, run only when awarded.
    Quote(u64),
    /// Run it.
    Run(Pay),
}

/// How a job that runs is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pay {
    /// Free, or pay-after (an invoice with the result): take a slot now.
    Unpaid,
    /// Pay-before. With escrow (a hold invoice) the slot is taken once the payment is held, so
    /// unpaid requests cannot fill the runner; a worker paid only by zaps (final, no refund)
    /// takes the slot first, so a zapped job never finds none.
    Before {
        /// Take the slot before asking for payment.
        slot_first: bool,
    },
}

/// The cheap checks, on what the request says and the worker's state.
pub fn screen(r: &Request<'_>, w: &View<'_>) -> Screened {
    let decline = |code, reason: String| Screened::Decline(code, reason);
    // Already running or answered by this process (it arrives by more than one road): no
    // second answer, not even a refusal.
    if r.taken {
        return Screened::Ignore;
    }
    // Stored requests from before this process started: only those we owe an answer.
    if r.stored && !(r.resumed || (r.directed && !r.answered)) {
        return Screened::Ignore;
    }
    match r.fresh {
        Fresh::Yes => {}
        Fresh::TooOld => return Screened::Ignore,
        Fresh::Expired => {
            return decline(
                ErrorCode::Expired,
                "the request expired before it could run".into(),
            )
        }
        Fresh::FromFuture => {
            return decline(
                ErrorCode::InvalidRequest,
                "the request's created_at is in the future".into(),
            )
        }
    }
    if !w.accepting {
        return decline(ErrorCode::Shutdown, "the worker is shutting down".into());
    }
    if !w.healthy || w.models.is_empty() {
        return decline(
            ErrorCode::RunnerFailed,
            "the inference runner is unavailable".into(),
        );
    }
    let model = match r.model {
        Some(m) if w.models.iter().any(|x| x.id == m) => m.to_owned(),
        Some(m) => {
            let served: Vec<&str> = w.models.iter().map(|m| m.id.as_str()).collect();
            return decline(
                ErrorCode::ModelUnavailable,
                format!(
                    "model `{m}` is not served here (serving: {})",
                    served.join(", ")
                ),
            );
        }
        None => w.models[0].id.clone(),
    };
    if let Some(f) = r.missing_feature {
        return decline(
            ErrorCode::InvalidRequest,
            format!("this worker does not serve `{f}` (see its ad's feature tags)"),
        );
    }
    if r.prompt_bytes > w.max_prompt_bytes {
        return decline(
            ErrorCode::PromptTooLarge,
            format!(
                "prompt is {} bytes; this worker accepts at most {}",
                r.prompt_bytes, w.max_prompt_bytes
            ),
        );
    }
    let max_tokens = r.max_tokens.unwrap_or(w.default_max_tokens);
    if max_tokens > w.max_tokens {
        return decline(
            ErrorCode::InvalidRequest,
            format!(
                "max_tokens {max_tokens} exceeds this worker's limit {}",
                w.max_tokens
            ),
        );
    }
    // A pay-before job that could not be offered anyway is declined before it is priced (a
    // runner call).
    if let Some((code, reason)) = no_room_to_offer(r, w) {
        return decline(code, reason);
    }
    Screened::Pass { model, max_tokens }
}

/// What a worker with every runner slot taken says.
pub fn all_busy(slots: u32) -> String {
    format!("all {slots} slots are busy")
}

/// What a worker whose unpaid quotes are at their bound says.
pub const TOO_MANY_QUOTES: &str = "too many unpaid quotes; try again later";

/// Pay-before, not an auction: the customer's unpaid quotes, all unpaid quotes, and — for a
/// worker paid by zaps only, which takes its slot first — a free slot.
fn no_room_to_offer(r: &Request<'_>, w: &View<'_>) -> Option<(ErrorCode, String)> {
    if w.mode != PaymentMode::Before || auction(r) {
        return None;
    }
    if !w.escrow && w.free_slots == 0 {
        return Some((ErrorCode::Capacity, all_busy(w.slots)));
    }
    if w.my_quotes >= w.quotes_per_customer || w.all_quotes >= w.quotes_total {
        return Some((ErrorCode::Capacity, TOO_MANY_QUOTES.into()));
    }
    None
}

/// A fed_AI auction: an open request with a bid, from fed_AI software, not already ours to run.
fn auction(r: &Request<'_>) -> bool {
    r.bid_msat.is_some() && r.fedai && !(r.directed || r.resumed)
}

/// A generic client's bid is the most it pays: a paid worker checks its price against it.
fn bid_binds(r: &Request<'_>, w: &View<'_>) -> bool {
    r.bid_msat.is_some() && !r.fedai && w.mode != PaymentMode::Free
}

/// Whether [`admit`] needs the job's price (a runner call: the prompt's token count).
pub fn needs_price(r: &Request<'_>, w: &View<'_>) -> bool {
    auction(r) || bid_binds(r, w) || w.mode == PaymentMode::Before
}

/// The decision, after [`screen`] passed, the inputs were fetched and — when
/// [`needs_price`] — the job was priced.
pub fn admit(r: &Request<'_>, w: &View<'_>, price_msat: Option<u64>) -> Decision {
    let price = price_msat.unwrap_or(0);
    if let (Some(bid), true) = (r.bid_msat, bid_binds(r, w)) {
        if price > bid {
            return Decision::Decline(
                ErrorCode::InvalidRequest,
                format!("this job costs {price} msat, over the bid of {bid} msat"),
            );
        }
    }
    if auction(r) {
        // Under our price: no quote (an auction has other bidders; silence is the answer).
        return match r.bid_msat {
            Some(bid) if price > bid => Decision::Ignore,
            _ => Decision::Quote(price),
        };
    }
    if r.taken {
        return Decision::Ignore; // already running or answered by this process
    }
    match w.mode {
        PaymentMode::Before => match no_room_to_offer(r, w) {
            Some((code, reason)) => Decision::Decline(code, reason),
            None => Decision::Run(Pay::Before {
                slot_first: !w.escrow,
            }),
        },
        // Full: a job directed to us waits in the queue while it has room (told its place); an
        // open one is left to workers with a free slot.
        _ if w.free_slots == 0 && !(r.directed && w.queued < w.queue) => {
            Decision::Decline(ErrorCode::Capacity, all_busy(w.slots))
        }
        _ => Decision::Run(Pay::Unpaid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "m".into(),
            context_length: 2048,
            quantisation: "q4".into(),
            dimensions: 0,
        }]
    }

    fn request() -> Request<'static> {
        Request {
            directed: true,
            stored: false,
            resumed: false,
            answered: false,
            taken: false,
            fresh: Fresh::Yes,
            model: None,
            prompt_bytes: 10,
            max_tokens: None,
            bid_msat: None,
            fedai: true,
            missing_feature: None,
        }
    }

    fn view(models: &[ModelInfo]) -> View<'_> {
        View {
            accepting: true,
            healthy: true,
            models,
            max_prompt_bytes: 100,
            default_max_tokens: 64,
            max_tokens: 256,
            mode: PaymentMode::Free,
            escrow: false,
            free_slots: 1,
            slots: 4,
            queued: 0,
            queue: 0,
            my_quotes: 0,
            all_quotes: 0,
            quotes_per_customer: 2,
            quotes_total: 64,
        }
    }

    fn code(s: Screened) -> Option<ErrorCode> {
        match s {
            Screened::Decline(c, _) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn a_plain_request_passes_with_the_first_model_and_default_tokens() {
        let m = models();
        assert_eq!(
            screen(&request(), &view(&m)),
            Screened::Pass {
                model: "m".into(),
                max_tokens: 64
            }
        );
        assert_eq!(
            admit(&request(), &view(&m), None),
            Decision::Run(Pay::Unpaid)
        );
    }

    #[test]
    fn screening_declines_with_the_reason() {
        let m = models();
        let w = view(&m);
        let r = request();
        let cases = [
            (
                Request {
                    fresh: Fresh::Expired,
                    ..r
                },
                w,
                ErrorCode::Expired,
            ),
            (
                r,
                View {
                    accepting: false,
                    ..w
                },
                ErrorCode::Shutdown,
            ),
            (
                r,
                View {
                    healthy: false,
                    ..w
                },
                ErrorCode::RunnerFailed,
            ),
            (
                Request {
                    model: Some("other"),
                    ..r
                },
                w,
                ErrorCode::ModelUnavailable,
            ),
            (
                Request {
                    prompt_bytes: 101,
                    ..r
                },
                w,
                ErrorCode::PromptTooLarge,
            ),
            (
                Request {
                    missing_feature: Some("json_schema"),
                    ..r
                },
                w,
                ErrorCode::InvalidRequest,
            ),
            (
                Request {
                    max_tokens: Some(257),
                    ..r
                },
                w,
                ErrorCode::InvalidRequest,
            ),
        ];
        for (r, w, want) in cases {
            assert_eq!(code(screen(&r, &w)), Some(want), "{r:?}");
        }
    }

    #[test]
    fn old_stored_requests_are_answered_only_when_owed() {
        let m = models();
        let w = view(&m);
        let stored = Request {
            stored: true,
            ..request()
        };
        // Directed and unanswered: owed.
        assert!(matches!(screen(&stored, &w), Screened::Pass { .. }));
        // Answered by the previous run.
        let answered = Request {
            answered: true,
            ..stored
        };
        assert_eq!(screen(&answered, &w), Screened::Ignore);
        // Open and not accepted before: not ours.
        let open = Request {
            directed: false,
            ..stored
        };
        assert_eq!(screen(&open, &w), Screened::Ignore);
        // Accepted before the restart: resumed.
        let resumed = Request {
            resumed: true,
            ..open
        };
        assert!(matches!(screen(&resumed, &w), Screened::Pass { .. }));
        assert_eq!(
            screen(
                &Request {
                    fresh: Fresh::TooOld,
                    ..request()
                },
                &w
            ),
            Screened::Ignore
        );
    }

    #[test]
    fn a_full_worker_declines_unpaid_work() {
        let m = models();
        let w = View {
            free_slots: 0,
            ..view(&m)
        };
        assert!(matches!(
            admit(&request(), &w, None),
            Decision::Decline(ErrorCode::Capacity, _)
        ));
        // Already taken by this process: no second answer, not even "full".
        let taken = Request {
            taken: true,
            ..request()
        };
        assert_eq!(admit(&taken, &w, None), Decision::Ignore);
    }

    #[test]
    fn pay_before_with_escrow_takes_no_slot_before_payment() {
        let m = models();
        let w = View {
            mode: PaymentMode::Before,
            escrow: true,
            free_slots: 0,
            ..view(&m)
        };
        assert!(needs_price(&request(), &w));
        // Full runner: the job is still quoted (its slot comes once the payment is held).
        assert_eq!(
            admit(&request(), &w, Some(5)),
            Decision::Run(Pay::Before { slot_first: false })
        );
        // Zap-only (no escrow): a zap is final, so the slot comes first.
        let zap_only = View { escrow: false, ..w };
        assert!(matches!(
            admit(&request(), &zap_only, Some(5)),
            Decision::Decline(ErrorCode::Capacity, _)
        ));
        let free = View {
            free_slots: 1,
            ..zap_only
        };
        assert_eq!(
            admit(&request(), &free, Some(5)),
            Decision::Run(Pay::Before { slot_first: true })
        );
    }

    #[test]
    fn unpaid_quotes_are_bounded_per_customer_and_in_all() {
        let m = models();
        let w = View {
            mode: PaymentMode::Before,
            escrow: true,
            ..view(&m)
        };
        for w in [
            View { my_quotes: 2, ..w },
            View {
                all_quotes: 64,
                ..w
            },
        ] {
            assert!(matches!(
                admit(&request(), &w, Some(5)),
                Decision::Decline(ErrorCode::Capacity, m) if m.contains("unpaid quotes")
            ));
        }
    }

    #[test]
    fn a_full_worker_queues_directed_jobs_while_its_queue_has_room() {
        let m = models();
        let w = View {
            free_slots: 0,
            queue: 2,
            queued: 1,
            ..view(&m)
        };
        assert_eq!(admit(&request(), &w, None), Decision::Run(Pay::Unpaid));
        // Open requests are not queued: a worker with a free slot takes them.
        let open = Request {
            directed: false,
            ..request()
        };
        assert!(matches!(
            admit(&open, &w, None),
            Decision::Decline(ErrorCode::Capacity, _)
        ));
        // A full queue turns directed jobs away too.
        let full = View { queued: 2, ..w };
        assert!(matches!(
            admit(&request(), &full, None),
            Decision::Decline(ErrorCode::Capacity, _)
        ));
    }

    #[test]
    fn a_request_already_taken_is_ignored_before_anything_else() {
        let m = models();
        let taken = Request {
            taken: true,
            fresh: Fresh::Expired,
            ..request()
        };
        let w = View {
            accepting: false,
            ..view(&m)
        };
        // Not "shutting down", not "expired": this process is running it.
        assert_eq!(screen(&taken, &w), Screened::Ignore);
    }

    #[test]
    fn a_pay_before_job_without_room_is_declined_before_it_is_priced() {
        let m = models();
        let w = View {
            mode: PaymentMode::Before,
            escrow: true,
            my_quotes: 2,
            ..view(&m)
        };
        assert!(matches!(
            screen(&request(), &w),
            Screened::Decline(ErrorCode::Capacity, _)
        ));
        // An auction asks no quote slot: it is only a bare price.
        let auction = Request {
            directed: false,
            bid_msat: Some(100),
            ..request()
        };
        assert!(matches!(screen(&auction, &w), Screened::Pass { .. }));
    }

    #[test]
    fn a_fed_ai_auction_is_quoted_and_not_run() {
        let m = models();
        let w = view(&m);
        let open_bid = Request {
            directed: false,
            bid_msat: Some(100),
            ..request()
        };
        assert!(needs_price(&open_bid, &w));
        assert_eq!(admit(&open_bid, &w, Some(80)), Decision::Quote(80));
        // Over the bid: silence.
        assert_eq!(admit(&open_bid, &w, Some(120)), Decision::Ignore);
        // Awarded (directed) or resumed: run.
        let awarded = Request {
            directed: true,
            ..open_bid
        };
        assert_eq!(admit(&awarded, &w, Some(80)), Decision::Run(Pay::Unpaid));
    }

    #[test]
    fn a_generic_bid_binds_a_paid_worker() {
        let m = models();
        let w = View {
            mode: PaymentMode::After,
            escrow: true,
            ..view(&m)
        };
        let generic = Request {
            fedai: false,
            directed: false,
            bid_msat: Some(100),
            ..request()
        };
        assert!(needs_price(&generic, &w));
        assert!(matches!(
            admit(&generic, &w, Some(101)),
            Decision::Decline(ErrorCode::InvalidRequest, _)
        ));
        assert_eq!(admit(&generic, &w, Some(100)), Decision::Run(Pay::Unpaid));
        // A free worker does not care about bids.
        let free = View {
            mode: PaymentMode::Free,
            ..w
        };
        assert!(!needs_price(&generic, &free));
        assert_eq!(admit(&generic, &free, None), Decision::Run(Pay::Unpaid));
    }
}
