//! The threads that run the Encryption SDK. Each has its own SDK client and keyring (the
//! keyring is a mutex-guarded object that stays locked across its KMS calls, so a shared one
//! serialises every decryption behind the slowest KMS call), a stack sized for the worst
//! message the limits admit, and a bounded queue in front of all of them. The SDK's KMS
//! calls are driven by a small runtime of the pool's own, so neither a slow KMS nor a busy
//! pool can park the service's async workers.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow};
use aws_esdk::client as esdk_client;
use aws_esdk::material_providers::client as mpl_client;
use aws_esdk::material_providers::types::keyring::KeyringRef;
use aws_esdk::material_providers::types::material_providers_config::MaterialProvidersConfig;
use aws_esdk::types::aws_encryption_sdk_config::AwsEncryptionSdkConfig;
use aws_sdk_kms::primitives::Blob;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use super::Limits;
use super::kms_outcome::{KmsOutcome, KmsOutcomes};
use aws_clients::Failure;

pub enum Work {
    Decrypt(Vec<u8>),
    Encrypt {
        plaintext: Vec<u8>,
        frame_length: Option<u32>,
    },
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Vec<u8>>>,
}

pub struct Pool {
    jobs: mpsc::Sender<Job>,
}

/// Stack for the SDK's recursion over frames, encryption context pairs and data keys, with
/// room to spare for the largest message `limits` admit. Measured in a debug build (the
/// deeper one): 16,000 frames needed between 8 and 16 MiB, so 0.5 to 1 KiB a frame; 1,000
/// context pairs fit in 1 MiB. `tests/hostile_messages.rs` decrypts a message with exactly
/// the default frame limit on these threads. Only the pages a decryption touches are resident.
pub fn stack_size(limits: &Limits) -> usize {
    const BASE: usize = 8 << 20;
    const PER_FRAME: usize = 4 << 10;
    const PER_CONTEXT_PAIR: usize = 4 << 10;
    const PER_DATA_KEY: usize = 16 << 10;
    BASE + PER_FRAME * limits.max_frames as usize
        + PER_CONTEXT_PAIR * limits.max_context_pairs as usize
        + PER_DATA_KEY * limits.max_data_keys as usize
}

/// One thread's SDK client and keyring.
struct Esdk {
    client: esdk_client::Client,
    keyring: KeyringRef,
}

impl Esdk {
    async fn new(kms: aws_sdk_kms::Client, key_arn: &str, limits: &Limits) -> Result<Esdk> {
        let client = esdk_client::Client::from_conf(
            AwsEncryptionSdkConfig::builder()
                .max_encrypted_data_keys(limits.max_data_keys as i64)
                .build()
                .map_err(|e| anyhow!("configuring the Encryption SDK: {e:?}"))?,
        )
        .map_err(|e| anyhow!("creating the Encryption SDK client: {e:?}"))?;
        let materials = mpl_client::Client::from_conf(
            MaterialProvidersConfig::builder()
                .build()
                .map_err(|e| anyhow!("configuring material providers: {e:?}"))?,
        )
        .map_err(|e| anyhow!("creating material providers: {e:?}"))?;
        let keyring = materials
            .create_aws_kms_keyring()
            .kms_key_id(key_arn)
            .kms_client(kms)
            .send()
            .await
            .map_err(|e| anyhow!("creating the KMS keyring for {key_arn}: {e:?}"))?;
        Ok(Esdk { client, keyring })
    }

    async fn run(&self, work: Work, kms: &KmsOutcomes) -> Result<Vec<u8>> {
        match work {
            Work::Decrypt(message) => {
                let output = self
                    .client
                    .decrypt()
                    .ciphertext(Blob::new(message))
                    .keyring(self.keyring.clone())
                    .send()
                    .await
                    .map_err(|e| decryption_failure(kms.take(), &format!("{e:?}")))?;
                Ok(output
                    .plaintext
                    .context("the Encryption SDK returned no plaintext")?
                    .into_inner())
            }
            Work::Encrypt {
                plaintext,
                frame_length,
            } => {
                let output = self
                    .client
                    .encrypt()
                    .plaintext(Blob::new(plaintext))
                    .keyring(self.keyring.clone())
                    .set_frame_length(frame_length.map(i64::from))
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", first_line(&format!("{e:?}"))))?;
                Ok(output
                    .ciphertext
                    .context("the Encryption SDK returned no ciphertext")?
                    .into_inner())
            }
        }
    }
}

impl Pool {
    pub async fn start(
        kms: aws_sdk_kms::Client,
        key_arn: &str,
        threads: usize,
        limits: &Limits,
    ) -> Result<Pool> {
        let mut sdks = Vec::with_capacity(threads);
        for _ in 0..threads.max(1) {
            // Each thread's own KMS client, whose calls tell how its decryptions failed.
            let outcomes = KmsOutcomes::default();
            let kms = outcomes.client(&kms);
            sdks.push((
                Esdk::new(kms.clone(), key_arn, limits).await?,
                kms,
                outcomes,
            ));
        }
        let io = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("decrypt-io")
                .enable_all()
                .build()
                .context("building the decryption runtime")?,
        );
        let (jobs, queue) = mpsc::channel::<Job>(sdks.len());
        let queue = Arc::new(Mutex::new(queue));
        for (i, (sdk, kms, outcomes)) in sdks.into_iter().enumerate() {
            let worker = Worker {
                io: io.clone(),
                queue: queue.clone(),
                kms,
                outcomes,
                key_arn: key_arn.to_string(),
                limits: *limits,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("decrypt-{i}"))
                .stack_size(stack_size(limits))
                .spawn(move || worker.serve(sdk));
            if let Err(err) = spawned {
                // Dropping a runtime here, on an async worker, would panic.
                if let Ok(io) = Arc::try_unwrap(io) {
                    io.shutdown_background();
                }
                return Err(err).context("starting a decryption thread");
            }
        }
        Ok(Pool { jobs })
    }

    /// Runs `work` on a pool thread; waits for a free one (the queue is as long as the pool).
    pub async fn run(&self, work: Work) -> Result<Vec<u8>> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Job { work, reply })
            .await
            .map_err(|_| anyhow!("the decryption threads have stopped"))?;
        result
            .await
            .map_err(|_| anyhow!("a decryption thread stopped during the job"))?
    }
}

struct Worker {
    io: Arc<Runtime>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    kms: aws_sdk_kms::Client,
    outcomes: KmsOutcomes,
    key_arn: String,
    limits: Limits,
}

impl Worker {
    /// Takes jobs until every sender is gone. The queue's lock is held only while waiting for
    /// a job, never while the SDK runs.
    fn serve(self, mut sdk: Esdk) {
        loop {
            let job = self.queue.lock().unwrap().blocking_recv();
            let Some(Job { work, reply }) = job else {
                return;
            };
            if reply.is_closed() {
                continue;
            }
            // What an earlier job's calls left is not this job's.
            self.outcomes.take();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.io.block_on(sdk.run(work, &self.outcomes))
            }));
            let result = match outcome {
                Ok(result) => result,
                Err(_) => {
                    // The keyring's mutex may be poisoned now: start afresh.
                    match self
                        .io
                        .block_on(Esdk::new(self.kms.clone(), &self.key_arn, &self.limits))
                    {
                        Ok(fresh) => sdk = fresh,
                        Err(err) => {
                            tracing::error!(error = %format!("{err:#}"), "a decryption thread could not recover and stops");
                            let _ = reply.send(Err(anyhow!("the Encryption SDK panicked")));
                            return;
                        }
                    }
                    Err(anyhow!("the Encryption SDK panicked on this message"))
                }
            };
            let _ = reply.send(result);
        }
    }
}

/// KMS (or the way to it) failed, or denied the call, while the SDK unwrapped a data key: not
/// the message's fault.
#[derive(Debug)]
pub struct KmsFailure {
    pub failure: Failure,
    message: String,
}

impl std::fmt::Display for KmsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KmsFailure {}

/// Why a decryption failed. How its KMS calls failed comes first, from the KMS SDK's typed
/// errors ([`KmsOutcomes`]): KMS failing or denying is not the message's fault. Otherwise
/// the message is at fault, and the SDK's text says how.
fn decryption_failure(kms: Option<KmsOutcome>, debug: &str) -> anyhow::Error {
    match kms {
        Some(KmsOutcome {
            failure: Failure::Transient,
            detail,
        }) => anyhow::Error::new(KmsFailure {
            failure: Failure::Transient,
            message: format!("KMS could not be reached or failed ({detail})"),
        }),
        Some(KmsOutcome {
            failure: Failure::Denied,
            detail,
        }) => anyhow::Error::new(KmsFailure {
            failure: Failure::Denied,
            message: format!("KMS denied kms:Decrypt with the configured key ({detail})"),
        }),
        Some(KmsOutcome { detail, .. }) => anyhow!(
            "KMS could not unwrap the data key ({detail}): it is corrupted or not wrapped by this key"
        ),
        None if debug.contains("AES Decrypt") => {
            anyhow!("the message failed authentication: it was corrupted or tampered with")
        }
        None => anyhow!("{}", first_line(debug)),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(400)
        .collect()
}
