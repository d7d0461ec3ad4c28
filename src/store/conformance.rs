//! The behaviour every [`ObjectStore`] must show. Each backend's tests run
//! it: memory and local directory in unit tests, S3 against moto in the
//! integration tests. Keys are made unique per run so stores can be shared.

use bytes::Bytes;

use super::{ObjectStore, PutMode, StoreError};

/// Panics with a message naming the broken behaviour.
pub async fn run(store: &dyn ObjectStore) {
    let base = format!(
        "conformance-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let key = format!("{base}/a/one.bin");

    // get of a missing key is NotFound
    match store.get(&key).await {
        Err(StoreError::NotFound(k)) => assert_eq!(k, key),
        other => panic!("get of a missing key: expected NotFound, got {other:?}"),
    }

    // put then get returns the bytes
    let tag = store
        .put(&key, Bytes::from_static(b"hello"), PutMode::Overwrite)
        .await
        .expect("put");
    assert!(!tag.is_empty(), "put returns an ETag");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Bytes::from_static(b"hello")
    );

    // overwrite replaces
    store
        .put(&key, Bytes::from_static(b"world!"), PutMode::Overwrite)
        .await
        .expect("overwrite");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Bytes::from_static(b"world!")
    );

    // create on an existing key is AlreadyExists and changes nothing
    match store
        .put(&key, Bytes::from_static(b"x"), PutMode::Create)
        .await
    {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("create over an existing key: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        store.get(&key).await.expect("get"),
        Bytes::from_static(b"world!")
    );

    // create on a new key succeeds
    let second = format!("{base}/a/two.bin");
    store
        .put(&second, Bytes::from_static(b"2"), PutMode::Create)
        .await
        .expect("create of a new key");
    let third = format!("{base}/b/three.bin");
    store
        .put(&third, Bytes::from_static(b"333"), PutMode::Overwrite)
        .await
        .expect("put");

    // copy duplicates an object under a new key
    let copied = format!("{base}/c/copy.bin");
    store.copy(&third, &copied).await.expect("copy");
    assert_eq!(
        store.get(&copied).await.expect("get copy"),
        Bytes::from_static(b"333")
    );
    match store.copy(&format!("{base}/none"), &copied).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("copy of a missing key: expected NotFound, got {other:?}"),
    }
    store.delete(&copied).await.expect("delete");

    // list by prefix, in key order, with sizes and times
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for meta in store.list(&format!("{base}/")).await.expect("list") {
        assert!(
            (meta.last_modified - now).abs() < 300,
            "last_modified of {} is {}",
            meta.key,
            meta.last_modified
        );
    }
    let listed = store.list(&format!("{base}/a/")).await.expect("list");
    let keys: Vec<_> = listed.iter().map(|m| (m.key.as_str(), m.size)).collect();
    assert_eq!(keys, vec![(key.as_str(), 6), (second.as_str(), 1)]);
    assert_eq!(
        store.list(&format!("{base}/")).await.expect("list").len(),
        3
    );
    assert!(
        store
            .list(&format!("{base}/none/"))
            .await
            .expect("list")
            .is_empty()
    );

    // delete removes; deleting again is fine
    store.delete(&key).await.expect("delete");
    store.delete(&key).await.expect("delete of a missing key");
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::NotFound(_))
    ));
    for k in [&second, &third] {
        store.delete(k).await.expect("delete");
    }
    if store.multipart() {
        multipart(store, &base).await;
    }
}

/// Parts uploaded out of order join in number order; an aborted upload
/// leaves nothing; open uploads are listed by prefix until completed.
async fn multipart(store: &dyn ObjectStore, base: &str) {
    let key = format!("{base}/m/joined.bin");
    let upload = store.create_upload(&key).await.expect("create upload");
    let first = Bytes::from(vec![7u8; super::MIN_PART_BYTES]);
    let second = store
        .upload_part(&upload, 2, Bytes::from_static(b"tail"))
        .await
        .expect("part 2");
    let one = store.upload_part(&upload, 1, first).await.expect("part 1");
    let open = store.uploads(&format!("{base}/m/")).await.expect("uploads");
    assert_eq!(open.len(), 1, "the open upload is listed: {open:?}");
    assert_eq!(
        (open[0].key.as_str(), open[0].id.as_str()),
        (key.as_str(), upload.id.as_str())
    );
    assert!(
        matches!(store.get(&key).await, Err(StoreError::NotFound(_))),
        "an upload is not an object before it is completed"
    );
    store
        .complete_upload(&upload, &[(1, one), (2, second)])
        .await
        .expect("complete");
    let body = store.get(&key).await.expect("get joined");
    assert_eq!(body.len(), super::MIN_PART_BYTES + 4);
    assert_eq!(&body[body.len() - 5..], b"\x07tail");
    assert!(
        store
            .uploads(&format!("{base}/m/"))
            .await
            .expect("uploads")
            .is_empty()
    );

    let dropped = format!("{base}/m/dropped.bin");
    let upload = store.create_upload(&dropped).await.expect("create upload");
    store
        .upload_part(&upload, 1, Bytes::from_static(b"x"))
        .await
        .expect("part 1");
    store.abort_upload(&upload).await.expect("abort");
    assert!(
        store
            .uploads(&format!("{base}/m/"))
            .await
            .expect("uploads")
            .is_empty()
    );
    assert!(matches!(
        store.get(&dropped).await,
        Err(StoreError::NotFound(_))
    ));
    store.delete(&key).await.expect("delete");
}
