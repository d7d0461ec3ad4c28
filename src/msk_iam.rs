//! Amazon MSK's IAM access control: SASL/OAUTHBEARER with a token that is
//! an AWS SigV4-presigned `kafka-cluster:Connect` request, signed with the
//! credentials the AWS SDK's default chain gives (the ones sluice uses for
//! S3 and SQS: environment, profile, web identity, container or instance
//! role).
//!
//! librdkafka asks for a token when it connects and again at 80 % of the
//! last token's lifetime, so a token (valid 15 minutes) is replaced before
//! it expires; each is signed with the credentials the chain holds then.

use std::error::Error;
use std::sync::Arc;

use aws_config::Region;
use aws_credential_types::provider::SharedCredentialsProvider;
use rdkafka::client::OAuthToken;
use tokio::runtime::{Handle, Runtime};

use crate::security::{Mechanism, SecurityConfig};

/// The token source `security` needs: one for AWS_MSK_IAM, none otherwise.
/// It has a one-thread runtime of its own (which drives the credential
/// chain's requests), so any thread that polls a client can sign, never
/// one of another runtime's threads.
pub fn tokens(security: &SecurityConfig) -> Result<Option<Arc<MskIam>>, String> {
    if security.sasl_mechanism != Some(Mechanism::AwsMskIam) || !security.protocol.sasl() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-msk-iam")
        .enable_all()
        .build()
        .map_err(|e| format!("AWS_MSK_IAM: cannot start a runtime: {e}"))?;
    let mut iam = runtime.block_on(MskIam::from_env(
        security.aws_region.as_deref(),
        runtime.handle().clone(),
    ))?;
    iam.own = Some(runtime);
    Ok(Some(Arc::new(iam)))
}

/// Signs MSK IAM tokens for one region.
pub struct MskIam {
    region: Region,
    credentials: SharedCredentialsProvider,
    runtime: Handle,
    /// The runtime `runtime` belongs to, when it is this source's own.
    own: Option<Runtime>,
}

impl std::fmt::Debug for MskIam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MskIam")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl MskIam {
    /// Tokens for `region` (else the SDK's region), signed with the SDK's
    /// default credential chain.
    pub async fn from_env(region: Option<&str>, runtime: Handle) -> Result<MskIam, String> {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let region = region
            .map(|r| Region::new(r.to_owned()))
            .or_else(|| sdk.region().cloned())
            .ok_or("AWS_MSK_IAM needs a region: set `kafka.security.aws_region` or AWS_REGION")?;
        let credentials = sdk
            .credentials_provider()
            .ok_or("AWS_MSK_IAM needs AWS credentials, and the SDK's default chain has none")?;
        Ok(MskIam::new(region, credentials, runtime))
    }

    pub fn new(region: Region, credentials: SharedCredentialsProvider, runtime: Handle) -> MskIam {
        MskIam {
            region,
            credentials,
            runtime,
            own: None,
        }
    }

    /// A fresh token and when it expires (ms since the epoch). Blocks on
    /// the runtime: called on the thread that polls the client, never on
    /// one of the runtime's.
    pub fn token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        let (token, lifetime_ms) = self.runtime.block_on(
            aws_msk_iam_sasl_signer::generate_auth_token_from_credentials_provider(
                self.region.clone(),
                self.credentials.clone(),
            ),
        )?;
        Ok(OAuthToken {
            token,
            // MSK takes the principal from the signature; librdkafka wants a name.
            principal_name: "sluice".to_owned(),
            lifetime_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use aws_credential_types::Credentials;
    use base64::Engine;

    use super::*;

    fn signed_url(token: &str) -> String {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn tokens_are_signed_for_the_region_and_replaced_before_they_expire() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let credentials = SharedCredentialsProvider::new(Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token".to_owned()),
            None,
            "test",
        ));
        let iam = MskIam::new(
            Region::new("eu-west-1"),
            credentials,
            runtime.handle().clone(),
        );
        let token = iam.token().unwrap();
        let url = signed_url(&token.token);
        assert!(
            url.starts_with(
                "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect"
            ),
            "{url}"
        );
        assert!(url.contains("X-Amz-Credential=AKIDEXAMPLE%2F"), "{url}");
        assert!(
            url.contains("%2Feu-west-1%2Fkafka-cluster%2Faws4_request"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Security-Token=session-token"), "{url}");
        assert!(
            !url.contains("wJalrXUtnFEMI"),
            "the secret key is never in the token"
        );
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let lifetime = Duration::from_millis((token.lifetime_ms - now_ms) as u64);
        // librdkafka asks again at 80 % of this: after ~12 of 15 minutes.
        assert!(
            lifetime > Duration::from_secs(14 * 60) && lifetime <= Duration::from_secs(15 * 60),
            "{lifetime:?}"
        );
        assert!(url.contains("X-Amz-Expires=900"), "{url}");

        // Each refresh signs anew: a later expiry, a different token.
        std::thread::sleep(Duration::from_millis(1100));
        let next = iam.token().unwrap();
        assert!(next.lifetime_ms > token.lifetime_ms);
        assert_ne!(next.token, token.token);
    }
}
