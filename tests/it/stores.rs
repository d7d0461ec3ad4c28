//! The object store conformance suite against a real S3 protocol server.

use sluice::store::{S3Store, conformance};

use crate::support;

#[tokio::test]
async fn s3_store_conforms_against_moto() {
    let bucket = support::unique("sluice-conf");
    support::create_bucket(&bucket).await;
    conformance::run(&S3Store::new(bucket, None, std::time::Duration::from_secs(30)).await).await;
}
