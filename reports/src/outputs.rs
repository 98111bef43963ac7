//! Where report outputs live: the warehouse's `reports/` tree (and the `_delta_log/` listings runs are keyed by), on
//! a local directory or on any object_store URL (`s3://bucket/prefix`), with the same storage options as the
//! warehouse's Delta tables.
//!
//! Keys are relative to the warehouse root, `/`-separated: `reports/<name>/latest`,
//! `reports/<name>/runs/<run id>/run.json`, `<table>/_delta_log/`.
//!
//! # Guarantees
//!
//! - [`OutputStore::put`] replaces an object atomically: a reader sees the old bytes or the new ones, never a part.
//!   Locally: a temp file beside it, fsync, rename, fsync of the directory (a write that returned survives a
//!   crash). On an object store: one PUT (S3 PUTs are atomic and durable when they return).
//! - [`OutputStore::put_if`] is a compare-and-swap: it writes only if the object is still absent
//!   ([`Expect::Absent`], S3 `If-None-Match: *`) or still the version read ([`Expect::Tag`], S3 `If-Match: <etag>`),
//!   and says [`Put::Conflict`] otherwise. object_store's S3 client sends these headers by default
//!   (`aws_conditional_put = etag`); a store that does not implement them is an error that names the option.
//!   Locally the check and the rename happen under a lock of this process: exact between the tasks of one
//!   process; two processes writing one local directory can still race (as before object stores were supported).
//! - Reads of a missing object are `None`, never an error.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::error::{ReportError, Result};

/// Serialises the conditional puts of local files in this process (check, then rename), whatever store they go
/// through.
static LOCAL_PUT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The version of an object as it was read or written, for [`OutputStore::put_if`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(TagKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TagKind {
    /// A hash of the local file's bytes.
    Local(u64),
    /// The object's ETag / version.
    Object {
        e_tag: Option<String>,
        version: Option<String>,
    },
}

/// What [`OutputStore::put_if`] expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No object yet.
    Absent,
    /// The object as it was when this tag was read or written.
    Tag(Tag),
}

/// How a conditional put ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Written; the new object's tag.
    Written(Tag),
    /// Someone else wrote (or deleted) the object since: nothing was written.
    Conflict,
}

/// The report outputs of one warehouse (cheap to clone).
#[derive(Clone)]
pub struct OutputStore {
    inner: Arc<Backend>,
}

enum Backend {
    Local {
        root: PathBuf,
    },
    Object {
        store: Arc<dyn ObjectStore>,
        /// The warehouse prefix inside the bucket (may be empty).
        prefix: String,
        url: url::Url,
    },
}

impl std::fmt::Debug for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OutputStore").field(&self.location()).finish()
    }
}

impl From<PathBuf> for OutputStore {
    fn from(root: PathBuf) -> Self {
        Self::local(root)
    }
}

impl From<&Path> for OutputStore {
    fn from(root: &Path) -> Self {
        Self::local(root)
    }
}

impl From<&PathBuf> for OutputStore {
    fn from(root: &PathBuf) -> Self {
        Self::local(root)
    }
}

/// Run `f` on the blocking pool when a tokio runtime is there, else right here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| ReportError::io("a file task", std::io::Error::other(e)))?,
        Err(_) => f(),
    }
}

fn local_tag(bytes: &[u8]) -> Tag {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Tag(TagKind::Local(h.finish()))
}

fn object_tag(e_tag: Option<String>, version: Option<String>) -> Tag {
    Tag(TagKind::Object { e_tag, version })
}

impl OutputStore {
    /// The outputs under the local directory `root` (the warehouse root; it need not exist yet).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Backend::Local { root: root.into() }),
        }
    }

    /// The outputs of the warehouse at `url`: `file://` is a local directory; `s3://bucket/prefix` (and the other
    /// object_store schemes, e.g. `memory://`) are reached with `storage_options` (object_store keys such as
    /// `aws_endpoint_url`, `aws_allow_http`, `aws_region`, credentials; case-insensitive). For S3 the standard AWS
    /// environment variables are read first and the options win over them; unknown keys are ignored (they may be
    /// deltalake's).
    pub fn open(url: &url::Url, storage_options: &HashMap<String, String>) -> Result<Self> {
        let bad = |e: object_store::Error| ReportError::storage(format!("the warehouse {url}"), e);
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| {
                ReportError::io(
                    format!("the warehouse {url}"),
                    std::io::Error::other("not a local path"),
                )
            })?;
            return Ok(Self::local(path));
        }
        let prefix = url.path().trim_matches('/').to_string();
        let store: Arc<dyn ObjectStore> = if matches!(url.scheme(), "s3" | "s3a") {
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
            for (k, v) in storage_options {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    builder = builder.with_config(key, v);
                }
            }
            Arc::new(builder.build().map_err(bad)?)
        } else {
            let options = storage_options.iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
            let (store, _) = object_store::parse_url_opts(url, options).map_err(bad)?;
            Arc::from(store)
        };
        Ok(Self {
            inner: Arc::new(Backend::Object {
                store,
                prefix,
                url: url.clone(),
            }),
        })
    }

    /// The outputs of `warehouse` (its local directory, or its URL and storage options).
    pub fn for_warehouse(warehouse: &freshet_query::Warehouse) -> Result<Self> {
        match warehouse.local_root() {
            Some(root) => Ok(Self::local(root)),
            None => Self::open(warehouse.url(), warehouse.storage_options()),
        }
    }

    /// The local root, when the outputs are on the filesystem.
    pub fn local_root(&self) -> Option<&Path> {
        match &*self.inner {
            Backend::Local { root, .. } => Some(root),
            Backend::Object { .. } => None,
        }
    }

    /// The warehouse root, for messages: a path or a URL.
    pub fn location(&self) -> String {
        match &*self.inner {
            Backend::Local { root, .. } => root.display().to_string(),
            Backend::Object { url, .. } => url.to_string(),
        }
    }

    /// Where `key` is, for messages.
    pub fn describe(&self, key: &str) -> String {
        match &*self.inner {
            Backend::Local { root, .. } => root.join(key).display().to_string(),
            Backend::Object { url, .. } => format!("{}/{key}", url.as_str().trim_end_matches('/')),
        }
    }

    fn object_path(prefix: &str, key: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{prefix}/{key}"))
        }
    }

    /// The bytes of `key` and their tag; `None` when it does not exist. `bytes_max`: larger objects are
    /// [`ReportError::TooLarge`] (without reading them).
    pub async fn get(&self, key: &str, bytes_max: Option<u64>) -> Result<Option<(Bytes, Tag)>> {
        let too_large = |bytes: u64| {
            bytes_max
                .filter(|max| bytes > *max)
                .map(|max| ReportError::TooLarge {
                    what: self.describe(key),
                    bytes,
                    bytes_max: max,
                })
        };
        match &*self.inner {
            Backend::Local { root, .. } => {
                let path = root.join(key);
                let described = self.describe(key);
                let read = blocking(move || {
                    let len = match std::fs::metadata(&path) {
                        Ok(m) => m.len(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(ReportError::io(format!("reading {described}"), e)),
                    };
                    if let Some(max) = bytes_max
                        && len > max
                    {
                        return Ok(Some(Err(len)));
                    }
                    match std::fs::read(&path) {
                        Ok(b) => Ok(Some(Ok(b))),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(ReportError::io(format!("reading {described}"), e)),
                    }
                })
                .await?;
                match read {
                    None => Ok(None),
                    Some(Err(len)) => Err(too_large(len).expect("over the limit")),
                    Some(Ok(b)) => {
                        let tag = local_tag(&b);
                        Ok(Some((Bytes::from(b), tag)))
                    }
                }
            }
            Backend::Object { store, prefix, .. } => {
                let path = Self::object_path(prefix, key);
                let got = match store.get(&path).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(ReportError::storage(format!("reading {}", self.describe(key)), e)),
                };
                if let Some(e) = too_large(got.meta.size) {
                    return Err(e);
                }
                let tag = object_tag(got.meta.e_tag.clone(), got.meta.version.clone());
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| ReportError::storage(format!("reading {}", self.describe(key)), e))?;
                Ok(Some((bytes, tag)))
            }
        }
    }

    /// `key` parsed as JSON, with its tag; `None` when it does not exist.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<(T, Tag)>> {
        let Some((bytes, tag)) = self.get(key, None).await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ReportError::json(format!("reading {}", self.describe(key)), e))?;
        Ok(Some((value, tag)))
    }

    /// Replace `key` with `bytes` atomically (see the module's guarantees).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        match &*self.inner {
            Backend::Local { root, .. } => {
                let path = root.join(key);
                blocking(move || write_atomic(&path, &bytes)).await
            }
            Backend::Object { store, prefix, .. } => {
                store
                    .put(&Self::object_path(prefix, key), PutPayload::from(bytes))
                    .await
                    .map_err(|e| ReportError::storage(format!("writing {}", self.describe(key)), e))?;
                Ok(())
            }
        }
    }

    /// Write `key` only if it is as `expect`ed (absent, or unchanged since its tag was taken).
    pub async fn put_if(&self, key: &str, bytes: Bytes, expect: Expect) -> Result<Put> {
        match &*self.inner {
            Backend::Local { root, .. } => {
                let path = root.join(key);
                let described = self.describe(key);
                blocking(move || {
                    let _guard = LOCAL_PUT_LOCK
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let current = match std::fs::read(&path) {
                        Ok(b) => Some(local_tag(&b)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => return Err(ReportError::io(format!("reading {described}"), e)),
                    };
                    let matches = match (&expect, current) {
                        (Expect::Absent, None) => true,
                        (Expect::Tag(want), Some(have)) => *want == have,
                        _ => false,
                    };
                    if !matches {
                        return Ok(Put::Conflict);
                    }
                    write_atomic(&path, &bytes)?;
                    Ok(Put::Written(local_tag(&bytes)))
                })
                .await
            }
            Backend::Object { store, prefix, .. } => {
                let mode = match expect {
                    Expect::Absent => PutMode::Create,
                    Expect::Tag(Tag(TagKind::Object { e_tag, version })) => {
                        PutMode::Update(UpdateVersion { e_tag, version })
                    }
                    Expect::Tag(Tag(TagKind::Local(_))) => {
                        return Err(ReportError::io(
                            format!("writing {}", self.describe(key)),
                            std::io::Error::other("a tag of a local file used on an object store"),
                        ));
                    }
                };
                let options = PutOptions {
                    mode,
                    ..PutOptions::default()
                };
                match store
                    .put_opts(&Self::object_path(prefix, key), PutPayload::from(bytes), options)
                    .await
                {
                    Ok(r) => Ok(Put::Written(object_tag(r.e_tag, r.version))),
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. }
                        | object_store::Error::NotFound { .. },
                    ) => Ok(Put::Conflict),
                    Err(e @ object_store::Error::NotImplemented { .. }) => Err(ReportError::storage(
                        format!(
                            "writing {} conditionally (the store must support If-None-Match / If-Match; \
                             object_store option aws_conditional_put=etag)",
                            self.describe(key)
                        ),
                        e,
                    )),
                    Err(e) => Err(ReportError::storage(format!("writing {}", self.describe(key)), e)),
                }
            }
        }
    }

    /// The names of the "directories" directly under `key` (common prefixes), unsorted.
    pub async fn list_dirs(&self, key: &str) -> Result<Vec<String>> {
        match &*self.inner {
            Backend::Local { root, .. } => {
                let dir = root.join(key);
                blocking(move || {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                        Err(e) => return Err(ReportError::io(format!("listing {}", dir.display()), e)),
                    };
                    let mut names = Vec::new();
                    for entry in entries {
                        let entry =
                            entry.map_err(|e| ReportError::io(format!("listing {}", dir.display()), e))?;
                        if entry.file_type().is_ok_and(|t| t.is_dir())
                            && let Ok(name) = entry.file_name().into_string()
                        {
                            names.push(name);
                        }
                    }
                    Ok(names)
                })
                .await
            }
            Backend::Object { store, prefix, .. } => {
                let path = Self::object_path(prefix, key);
                let listing = store
                    .list_with_delimiter(Some(&path))
                    .await
                    .map_err(|e| ReportError::storage(format!("listing {}", self.describe(key)), e))?;
                Ok(listing
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect())
            }
        }
    }

    /// The names of the files directly under `key` that sort after `offset` (all when `None`), unsorted.
    pub async fn list_files(&self, key: &str, offset: Option<&str>) -> Result<Vec<String>> {
        let offset = offset.map(str::to_string);
        match &*self.inner {
            Backend::Local { root, .. } => {
                let dir = root.join(key);
                blocking(move || {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                        Err(e) => return Err(ReportError::io(format!("listing {}", dir.display()), e)),
                    };
                    let mut names = Vec::new();
                    for entry in entries {
                        let entry =
                            entry.map_err(|e| ReportError::io(format!("listing {}", dir.display()), e))?;
                        if let Ok(name) = entry.file_name().into_string()
                            && offset.as_ref().is_none_or(|o| name > *o)
                            && entry.file_type().is_ok_and(|t| t.is_file())
                        {
                            names.push(name);
                        }
                    }
                    Ok(names)
                })
                .await
            }
            Backend::Object { store, prefix, .. } => {
                let dir = Self::object_path(prefix, key);
                let listing = match &offset {
                    Some(o) => store.list_with_offset(Some(&dir), &dir.clone().join(o.as_str())),
                    None => store.list(Some(&dir)),
                };
                let depth = dir.parts().count() + 1;
                listing
                    .try_filter_map(|meta| {
                        let direct = meta.location.parts().count() == depth;
                        std::future::ready(Ok(direct
                            .then(|| meta.location.filename().map(str::to_string))
                            .flatten()))
                    })
                    .try_collect()
                    .await
                    .map_err(|e| ReportError::storage(format!("listing {}", self.describe(key)), e))
            }
        }
    }

    /// Read many small JSON objects, at most `concurrent_max` at once; missing ones are left out.
    pub async fn get_many_json<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        keys: Vec<String>,
        concurrent_max: usize,
    ) -> Result<Vec<T>> {
        let results: Vec<Result<Option<(T, Tag)>>> = futures::stream::iter(keys)
            .map(|key| {
                let me = self.clone();
                async move { me.get_json::<T>(&key).await }
            })
            .buffer_unordered(concurrent_max.max(1))
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            if let Some((value, _)) = r? {
                out.push(value);
            }
        }
        Ok(out)
    }
}

/// Write `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let ctx = |what: &str| format!("{what} {}", path.display());
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(ctx("creating the directory of"), e))?;
    // Unique per process and call, so two tasks writing one file never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut file = std::fs::File::create(&tmp).map_err(|e| ReportError::io(ctx("writing"), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ReportError::io(ctx("writing"), e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| ReportError::io(ctx("renaming into"), e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> (tempfile::TempDir, Vec<OutputStore>) {
        let dir = tempfile::tempdir().unwrap();
        let memory = OutputStore::open(&url::Url::parse("memory:///wh").unwrap(), &HashMap::new()).unwrap();
        let local = OutputStore::local(dir.path());
        (dir, vec![local, memory])
    }

    #[tokio::test]
    async fn conditional_puts_are_compare_and_swap() {
        let (_dir, stores) = stores();
        for s in stores {
            let key = "reports/r/latest";
            assert!(s.get(key, None).await.unwrap().is_none(), "{s:?}");
            let Put::Written(t1) = s.put_if(key, Bytes::from("a"), Expect::Absent).await.unwrap() else {
                panic!("first create wins: {s:?}")
            };
            assert_eq!(
                s.put_if(key, Bytes::from("b"), Expect::Absent).await.unwrap(),
                Put::Conflict,
                "{s:?}"
            );
            let (bytes, read_tag) = s.get(key, None).await.unwrap().unwrap();
            assert_eq!(&bytes[..], b"a");
            let Put::Written(t2) = s
                .put_if(key, Bytes::from("c"), Expect::Tag(read_tag.clone()))
                .await
                .unwrap()
            else {
                panic!("update with the tag read wins: {s:?}")
            };
            assert_ne!(t1, t2);
            // The tag read before the update is stale now.
            assert_eq!(
                s.put_if(key, Bytes::from("d"), Expect::Tag(read_tag))
                    .await
                    .unwrap(),
                Put::Conflict,
                "{s:?}"
            );
            assert_eq!(&s.get(key, None).await.unwrap().unwrap().0[..], b"c");
            assert!(matches!(
                s.get(key, Some(0)).await,
                Err(ReportError::TooLarge { bytes: 1, .. })
            ));
        }
    }

    #[tokio::test]
    async fn listings_name_direct_children() {
        let (_dir, stores) = stores();
        for s in stores {
            for key in [
                "t/_delta_log/00000000000000000000.json",
                "t/_delta_log/00000000000000000001.json",
                "t/_delta_log/_commits/x.json",
                "reports/r/runs/a@v1/run.json",
                "reports/r/runs/b@v2/run.json",
                "reports/r/latest",
            ] {
                s.put(key, Bytes::from("{}")).await.unwrap();
            }
            let mut dirs = s.list_dirs("reports/r/runs").await.unwrap();
            dirs.sort();
            assert_eq!(dirs, ["a@v1", "b@v2"], "{s:?}");
            let mut files = s.list_files("t/_delta_log", None).await.unwrap();
            files.sort();
            assert_eq!(
                files,
                ["00000000000000000000.json", "00000000000000000001.json"],
                "{s:?}"
            );
            let after = s
                .list_files("t/_delta_log", Some("00000000000000000000.json"))
                .await
                .unwrap();
            assert_eq!(after, ["00000000000000000001.json"], "{s:?}");
            assert!(s.list_dirs("reports/none").await.unwrap().is_empty());
        }
    }
}
