//! How the KMS calls of one decryption failed, told by the KMS SDK's own error kinds.
//!
//! The Encryption SDK turns every KMS error it does not model (throttling, access denied,
//! timeouts, connection failures) into opaque text, so its errors cannot say whether KMS or
//! the message failed. An interceptor on the KMS client that each decryption thread hands the
//! SDK sees every call's typed outcome instead, and keeps the one that matters: a thread runs
//! one decryption at a time, so what it saw belongs to that decryption.

use std::sync::{Arc, Mutex};

use aws_sdk_kms::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kms::error::{BoxError, ProvideErrorMetadata};

use aws_clients::{Failure, classify_service_error};

/// The failed KMS call that decides a decryption's failure: its kind and what KMS said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsOutcome {
    pub failure: Failure,
    /// The error code, or the kind of failure when KMS did not answer.
    pub detail: String,
}

/// Records the KMS failures of the current decryption.
#[derive(Debug, Clone, Default)]
pub struct KmsOutcomes(Arc<Mutex<Option<KmsOutcome>>>);

impl KmsOutcomes {
    /// What the calls since the last `take` said, forgetting it.
    pub fn take(&self) -> Option<KmsOutcome> {
        self.0.lock().unwrap().take()
    }

    /// Keeps `outcome` unless one already kept says more: KMS failing or denying matters
    /// more than a refusal of the message (a later call may fail differently).
    fn record(&self, outcome: KmsOutcome) {
        let mut kept = self.0.lock().unwrap();
        let matters = |o: &KmsOutcome| matches!(o.failure, Failure::Transient | Failure::Denied);
        if kept
            .as_ref()
            .is_none_or(|k| !matters(k) || matters(&outcome))
        {
            *kept = Some(outcome);
        }
    }

    /// A KMS client like `kms` whose calls are recorded here.
    pub fn client(&self, kms: &aws_sdk_kms::Client) -> aws_sdk_kms::Client {
        let config = kms.config().to_builder().interceptor(self.clone()).build();
        aws_sdk_kms::Client::from_conf(config)
    }
}

impl Intercept for KmsOutcomes {
    fn name(&self) -> &'static str {
        "KmsOutcomes"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(Err(error)) = context.output_or_error() else {
            return Ok(());
        };
        let status = context.response().map(|r| r.status().as_u16());
        let outcome = if error.is_timeout_error() {
            KmsOutcome {
                failure: Failure::Transient,
                detail: "timeout".into(),
            }
        } else if error.is_connector_error() || error.is_response_error() {
            KmsOutcome {
                failure: Failure::Transient,
                detail: "no answer".into(),
            }
        } else if let Some(operation) = error.as_operation_error() {
            let code = operation
                .downcast_ref::<aws_sdk_kms::operation::decrypt::DecryptError>()
                .and_then(|e| e.code().map(str::to_string))
                .or_else(|| {
                    operation
                        .downcast_ref::<aws_sdk_kms::operation::generate_data_key::GenerateDataKeyError>()
                        .and_then(|e| e.code().map(str::to_string))
                });
            KmsOutcome {
                failure: classify_service_error(code.as_deref(), status.unwrap_or_default()),
                detail: code.unwrap_or_else(|| format!("HTTP {}", status.unwrap_or_default())),
            }
        } else {
            KmsOutcome {
                failure: Failure::Other,
                detail: "the call could not be made".into(),
            }
        };
        self.record(outcome);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(failure: Failure, detail: &str) -> KmsOutcome {
        KmsOutcome {
            failure,
            detail: detail.into(),
        }
    }

    #[test]
    fn kms_failing_outweighs_a_refusal_of_the_message_and_take_forgets() {
        let outcomes = KmsOutcomes::default();
        assert_eq!(outcomes.take(), None);
        outcomes.record(outcome(Failure::Other, "InvalidCiphertextException"));
        outcomes.record(outcome(Failure::Transient, "KMSInternalException"));
        outcomes.record(outcome(Failure::Other, "IncorrectKeyException"));
        assert_eq!(
            outcomes.take(),
            Some(outcome(Failure::Transient, "KMSInternalException"))
        );
        assert_eq!(outcomes.take(), None);
        outcomes.record(outcome(Failure::Transient, "timeout"));
        outcomes.record(outcome(Failure::Denied, "AccessDeniedException"));
        assert_eq!(
            outcomes.take(),
            Some(outcome(Failure::Denied, "AccessDeniedException"))
        );
    }
}
