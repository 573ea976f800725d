//! Following a job over the network: relay events, payments and time fed to its
//! [`JobTracker`], its actions carried out; and [`JobHandle`], a running job as a stream of
//! updates.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::EventId;
use fedai_protocol::JobRequest;
use futures_util::{Stream, StreamExt};
use nostr_sdk::prelude::ClientNotification;

use crate::client::Sub;
use crate::job::{Action, Answer, JobTracker};
use crate::pay::Payments;
use crate::{ClientError, FedaiClient, JobOutcome, JobUpdate, RunOptions};

/// What woke the driver.
enum Input {
    Notification(Option<ClientNotification>),
    Wake,
    PaymentEnded(Result<(), ClientError>),
}

impl FedaiClient {
    /// Publish `request` (encrypted to its provider when `private`), stream updates to
    /// `on_update`, and return the verified result. Errors from the worker end the job.
    pub async fn submit(
        &self,
        request: JobRequest,
        private: bool,
        timeout: Duration,
        mut on_update: impl FnMut(JobUpdate),
    ) -> Result<JobOutcome, ClientError> {
        let mut sub = self.publish_request(&request, private, &[]).await?;
        on_update(JobUpdate::Submitted(sub.event.id));
        let mut job = JobTracker::new(
            sub.parsed.clone(),
            self.keys().clone(),
            request.provider,
            timeout,
            Instant::now(),
        );
        let r = self
            .follow(&mut sub, &mut job, &mut Payments::none(), &mut on_update)
            .await;
        self.close(sub).await;
        r
    }

    /// Run `request` like [`run`](Self::run), in the background: the handle streams its
    /// updates and then gives its outcome.
    pub fn start(&self, request: JobRequest, opts: RunOptions) -> JobHandle {
        self.spawn_run(None, request, opts)
    }

    /// [`start`](Self::start) over ads the caller has just fetched (see
    /// [`run_on`](Self::run_on)).
    pub fn start_on(
        &self,
        ads: Vec<ParsedCapabilityAd>,
        request: JobRequest,
        opts: RunOptions,
    ) -> JobHandle {
        self.spawn_run(Some(ads), request, opts)
    }

    fn spawn_run(
        &self,
        ads: Option<Vec<ParsedCapabilityAd>>,
        request: JobRequest,
        opts: RunOptions,
    ) -> JobHandle {
        let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
        let client = self.clone();
        let task = tokio::spawn(async move {
            let on_update = |u| {
                let _ = tx.send(u);
            };
            match ads {
                Some(ads) => client.run_on(ads, request, &opts, on_update).await,
                None => client.run(request, &opts, on_update).await,
            }
        });
        JobHandle { updates, task }
    }

    /// Drive `job` until it is done: its verified answer (paid for, when asked) or its error.
    pub(crate) async fn follow(
        &self,
        sub: &mut Sub,
        job: &mut JobTracker,
        pay: &mut Payments,
        on_update: &mut impl FnMut(JobUpdate),
    ) -> Result<JobOutcome, ClientError> {
        let answer = loop {
            let wake = tokio::time::Instant::from_std(job.wake_at());
            let input = tokio::select! {
                n = tokio::time::timeout_at(wake, sub.notifications.next()) => match n {
                    Ok(n) => Input::Notification(n),
                    Err(_) => Input::Wake,
                },
                r = pay.ended() => Input::PaymentEnded(r),
            };
            let now = Instant::now();
            let actions = match input {
                Input::Notification(Some(ClientNotification::Event { event, .. })) => {
                    job.on_event(&event, now)
                }
                Input::Notification(Some(ClientNotification::Message { relay_url, message })) => {
                    self.reopen_if_closed(sub, relay_url, &message);
                    continue;
                }
                Input::Notification(Some(ClientNotification::Shutdown)) => continue,
                Input::Notification(None) => {
                    break Err(ClientError::Relay("client shut down".into()))
                }
                Input::Wake => job.on_wake(now),
                Input::PaymentEnded(r) => {
                    job.on_payment_ended(r, now);
                    continue;
                }
            };
            if let Some(done) = self.act(sub.event.id, pay, actions, on_update).await {
                break done;
            }
        };
        let answer = answer.inspect_err(|_| pay.abandon())?;
        let payment = pay.settle(self, &answer.result, on_update).await?;
        let Answer {
            result,
            metering,
            first_token,
            stream_matched,
        } = *answer;
        Ok(JobOutcome {
            request: sub.parsed.clone(),
            output: result.result.output.clone(),
            result,
            metering,
            first_token,
            total: job.sent_at().elapsed(),
            payment,
            stream_matched,
            spot_check: None,
        })
    }

    /// Carry out the tracker's actions, in order; the job's end when one ends it.
    async fn act(
        &self,
        request_id: EventId,
        pay: &mut Payments,
        actions: Vec<Action>,
        on_update: &mut impl FnMut(JobUpdate),
    ) -> Option<Result<Box<Answer>, ClientError>> {
        for action in actions {
            let started = match action {
                Action::Update(u) => {
                    on_update(u);
                    continue;
                }
                Action::Done(r) => return Some(r),
                Action::PayInvoice {
                    amount_msat,
                    bolt11,
                } => pay.pay_invoice(request_id, amount_msat, bolt11),
                Action::PayZap {
                    worker,
                    amount_msat,
                    target,
                } => {
                    pay.pay_zap(self, request_id, worker, amount_msat, target)
                        .await
                }
            };
            // A payment refused (over a cap, a bad invoice, no payer) ends the job; the
            // `Paying` update that follows the request is not announced.
            if let Err(e) = started {
                return Some(Err(e));
            }
        }
        None
    }
}

/// A job running in the background ([`FedaiClient::start`]): a [`Stream`] of its
/// [`JobUpdate`]s, then [`outcome`](Self::outcome). Dropping it leaves the job running to its
/// end; [`abort`](Self::abort) stops following it.
pub struct JobHandle {
    updates: tokio::sync::mpsc::UnboundedReceiver<JobUpdate>,
    task: tokio::task::JoinHandle<Result<JobOutcome, ClientError>>,
}

impl JobHandle {
    /// The next update, or `None` once the job is over.
    pub async fn update(&mut self) -> Option<JobUpdate> {
        self.updates.recv().await
    }

    /// The verified result, or why there is none.
    pub async fn outcome(self) -> Result<JobOutcome, ClientError> {
        self.task
            .await
            .map_err(|e| ClientError::Relay(format!("the job's task ended: {e}")))?
    }

    /// Stop following the job (a running attempt is not cancelled on the network).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Stream for JobHandle {
    type Item = JobUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobUpdate>> {
        self.updates.poll_recv(cx)
    }
}
