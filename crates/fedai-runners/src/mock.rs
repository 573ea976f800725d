//! A deterministic in-process runner. **A fake, for unit tests only**: it runs no model. It is
//! refused by the default sandbox policy, so a worker cannot serve it by accident.

use std::time::Duration;

use fedai_protocol::ModelInfo;

use crate::{
    as_messages, BoxFuture, Estimate, InferRequest, Piece, Runner, RunnerError, TokenStream,
};

/// Emits `tok0 tok1 …` up to `max_tokens`, one piece per token, `delay` apart.
#[derive(Debug, Clone, Default)]
pub struct MockRunner {
    /// Delay between tokens.
    pub delay: Duration,
}

/// The one model the mock serves.
pub const MOCK_MODEL: &str = "mock-model";

impl Runner for MockRunner {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, RunnerError>> {
        Box::pin(async {
            Ok(vec![ModelInfo {
                id: MOCK_MODEL.into(),
                context_length: 4096,
                quantisation: "none".into(),
                dimensions: 0,
            }])
        })
    }

    fn infer(&self, req: InferRequest) -> BoxFuture<'_, Result<TokenStream, RunnerError>> {
        let delay = self.delay;
        Box::pin(async move {
            if req.model != MOCK_MODEL {
                return Err(RunnerError::UnknownModel(req.model));
            }
            let input_tokens: u64 = as_messages(&req.input)
                .iter()
                .map(|m| m.content.split_whitespace().count() as u64)
                .sum();
            let n = req.max_tokens as u64;
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i > n {
                    return None;
                }
                if i == n {
                    return Some((
                        Ok(Piece::Done {
                            input_tokens,
                            output_tokens: n,
                        }),
                        i + 1,
                    ));
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok(Piece::Text(format!("tok{i} "))), i + 1))
            });
            Ok(Box::pin(stream) as TokenStream)
        })
    }

    /// 8 dimensions from a hash of the model and text, unit length: deterministic, and different
    /// texts get different vectors. A token per whitespace-separated word.
    fn embed<'a>(
        &'a self,
        model: &'a str,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<crate::Embedded, RunnerError>> {
        Box::pin(async move {
            if model != MOCK_MODEL {
                return Err(RunnerError::UnknownModel(model.to_owned()));
            }
            let vectors = texts
                .iter()
                .map(|t| {
                    let h = fedai_protocol::sha256_hex(format!("{model}\n{t}").as_bytes());
                    let v: Vec<f32> = h.as_bytes()[..8]
                        .iter()
                        .map(|b| f32::from(*b) - 80.0)
                        .collect();
                    let norm = v
                        .iter()
                        .map(|x| x * x)
                        .sum::<f32>()
                        .sqrt()
                        .max(f32::MIN_POSITIVE);
                    v.into_iter().map(|x| x / norm).collect()
                })
                .collect();
            Ok(crate::Embedded {
                vectors,
                input_tokens: texts
                    .iter()
                    .map(|t| t.split_whitespace().count() as u64)
                    .sum(),
            })
        })
    }

    fn estimate(&self, req: &InferRequest) -> BoxFuture<'_, Result<Estimate, RunnerError>> {
        let input_tokens = as_messages(&req.input)
            .iter()
            .map(|m| m.content.split_whitespace().count() as u64)
            .sum();
        let est = Estimate {
            input_tokens,
            max_output_tokens: u64::from(req.max_tokens),
        };
        Box::pin(async move { Ok(est) })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), RunnerError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::{JobInput, JobParams};
    use futures_util::StreamExt;

    #[tokio::test]
    async fn mock_is_deterministic_and_counts_tokens() {
        let r = MockRunner::default();
        let req = InferRequest {
            model: MOCK_MODEL.into(),
            input: JobInput::Text("a b c".into()),
            params: JobParams::default(),
            max_tokens: 3,
        };
        let pieces: Vec<Piece> = r
            .infer(req.clone())
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(
            pieces,
            vec![
                Piece::Text("tok0 ".into()),
                Piece::Text("tok1 ".into()),
                Piece::Text("tok2 ".into()),
                Piece::Done {
                    input_tokens: 3,
                    output_tokens: 3
                },
            ]
        );
        let bad = InferRequest {
            model: "nope".into(),
            ..req
        };
        assert!(matches!(
            r.infer(bad).await.err(),
            Some(RunnerError::UnknownModel(_))
        ));
    }
}
