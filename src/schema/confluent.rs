//! A Confluent-compatible Schema Registry over REST: Protobuf schemas by id,
//! their references (imports) fetched recursively by subject and version,
//! compiled with protox, and cached by id for the life of the process.
//!
//! Calls are blocking and happen at start-up and the first time an id is
//! seen, never per record. Transport errors and 5xx answers are retried
//! with backoff; a 404 is an answer, not retried.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost_reflect::DescriptorPool;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde::Deserialize;

/// Attempts per registry call.
const ATTEMPTS: u32 = 4;
/// References deeper than this are refused (a reference cycle, most likely).
const MAX_REFERENCE_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url}: {path} not found")]
    NotFound { url: String, path: String },
    #[error(
        "schema registry {url} refused the request ({path}): HTTP {status}; check the user and password in schema.registry"
    )]
    Refused {
        url: String,
        path: String,
        status: u16,
    },
    #[error("schema registry {url} unreachable ({path}): {message}")]
    Unreachable {
        url: String,
        path: String,
        message: String,
    },
    #[error("schema {id} from {url} is {kind}, not PROTOBUF")]
    NotProtobuf { url: String, id: u32, kind: String },
    #[error("schema {id} from {url} does not compile: {message}")]
    Compile {
        url: String,
        id: u32,
        message: String,
    },
    #[error("schema {id} from {url}: references nest deeper than {MAX_REFERENCE_DEPTH}")]
    TooDeep { url: String, id: u32 },
}

#[derive(Debug, Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

#[derive(Debug, Deserialize)]
struct SchemaAnswer {
    #[serde(default)]
    id: Option<u32>,
    schema: String,
    /// Absent means AVRO in the Confluent API.
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

/// The registry client.
pub struct ConfluentRegistry {
    url: String,
    agent: ureq::Agent,
    authorization: Option<String>,
    cache: Mutex<HashMap<u32, Arc<DescriptorPool>>>,
}

impl std::fmt::Debug for ConfluentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("ConfluentRegistry")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ConfluentRegistry {
    /// `url` is the registry's base (`https://registry:8081`); credentials
    /// for basic auth may be given as `https://user:password@registry:8081`.
    pub fn new(url: &str) -> ConfluentRegistry {
        let (url, authorization) = split_credentials(url);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        ConfluentRegistry {
            url: url.trim_end_matches('/').to_owned(),
            agent,
            authorization,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The compiled schema with this id (from the cache after the first call).
    pub fn schema(&self, id: u32) -> Result<Arc<DescriptorPool>, RegistryError> {
        if let Some(pool) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(pool.clone());
        }
        let answer: SchemaAnswer = self.get(&format!("/schemas/ids/{id}"))?;
        self.compile_and_cache(id, answer)
    }

    fn compile_and_cache(
        &self,
        id: u32,
        answer: SchemaAnswer,
    ) -> Result<Arc<DescriptorPool>, RegistryError> {
        let pool = Arc::new(self.compile(id, answer)?);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, pool.clone());
        Ok(pool)
    }

    /// The id and compiled schema of a subject's latest version.
    pub fn latest(&self, subject: &str) -> Result<(u32, Arc<DescriptorPool>), RegistryError> {
        self.subject_version(subject, None)
    }

    /// The id and compiled schema of a subject's `version` (`None`: latest).
    pub fn subject_version(
        &self,
        subject: &str,
        version: Option<u32>,
    ) -> Result<(u32, Arc<DescriptorPool>), RegistryError> {
        let version = version.map_or_else(|| "latest".to_owned(), |v| v.to_string());
        let answer: SchemaAnswer = self.get(&subject_path(subject, &version))?;
        let id = answer.id.unwrap_or_default();
        Ok((id, self.compile_and_cache(id, answer)?))
    }

    fn compile(&self, id: u32, answer: SchemaAnswer) -> Result<DescriptorPool, RegistryError> {
        let kind = answer.schema_type.as_deref().unwrap_or("AVRO");
        if kind != "PROTOBUF" {
            return Err(RegistryError::NotProtobuf {
                url: self.url.clone(),
                id,
                kind: kind.to_owned(),
            });
        }
        let mut files = BTreeMap::new();
        self.fetch_references(id, &answer.references, &mut files, 0)?;
        let main = format!("schema-{id}.proto");
        files.insert(main.clone(), answer.schema);
        let mut resolver = ChainFileResolver::new();
        resolver.add(MemoryResolver(files));
        resolver.add(GoogleFileResolver::new());
        let compile_error = |e: protox::Error| RegistryError::Compile {
            url: self.url.clone(),
            id,
            message: e.to_string(),
        };
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.open_file(&main).map_err(compile_error)?;
        Ok(compiler.descriptor_pool())
    }

    fn fetch_references(
        &self,
        id: u32,
        references: &[Reference],
        files: &mut BTreeMap<String, String>,
        depth: usize,
    ) -> Result<(), RegistryError> {
        if depth > MAX_REFERENCE_DEPTH {
            return Err(RegistryError::TooDeep {
                url: self.url.clone(),
                id,
            });
        }
        for reference in references {
            if files.contains_key(&reference.name) {
                continue;
            }
            let path = subject_path(&reference.subject, &reference.version.to_string());
            let answer: SchemaAnswer = self.get(&path)?;
            self.fetch_references(id, &answer.references, files, depth + 1)?;
            files.insert(reference.name.clone(), answer.schema);
        }
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, RegistryError> {
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let mut request = self
                .agent
                .get(format!("{}{path}", self.url))
                .header("Accept", "application/vnd.schemaregistry.v1+json");
            if let Some(auth) = &self.authorization {
                request = request.header("Authorization", auth);
            }
            let error = match request.call() {
                Ok(mut response) => match response.body_mut().read_json::<T>() {
                    Ok(value) => return Ok(value),
                    Err(e) => e,
                },
                Err(ureq::Error::StatusCode(404)) => {
                    return Err(RegistryError::NotFound {
                        url: self.url.clone(),
                        path: path.to_owned(),
                    });
                }
                Err(ureq::Error::StatusCode(status @ (401 | 403))) => {
                    return Err(RegistryError::Refused {
                        url: self.url.clone(),
                        path: path.to_owned(),
                        status,
                    });
                }
                Err(e) => e,
            };
            let retryable = !matches!(error, ureq::Error::StatusCode(400..=499));
            if !retryable || attempt >= ATTEMPTS {
                return Err(RegistryError::Unreachable {
                    url: self.url.clone(),
                    path: path.to_owned(),
                    message: error.to_string(),
                });
            }
            tracing::warn!(path, attempt, error = %error, "schema registry call failed, retrying");
            std::thread::sleep(backoff);
            backoff *= 2;
            attempt += 1;
        }
    }
}

/// `/subjects/<subject>/versions/<version>`, the subject percent-encoded:
/// Confluent's serializers register an imported file under its import
/// path (`acme/common/v1/money.proto`), slashes included.
fn subject_path(subject: &str, version: &str) -> String {
    const SUBJECT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!(
        "/subjects/{}/versions/{version}",
        percent_encoding::utf8_percent_encode(subject, SUBJECT)
    )
}

/// Serves the fetched schemas to protox by file name: `.proto` text, or a
/// serialized `FileDescriptorProto` in base64 (what Confluent's
/// serializers register, and what a registry may serve back).
struct MemoryResolver(BTreeMap<String, String>);

impl FileResolver for MemoryResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(schema) => match serialized(schema) {
                Some(mut descriptor) => {
                    // Known to the others by the name it is imported as.
                    descriptor.name = Some(name.to_owned());
                    Ok(File::from_file_descriptor_proto(descriptor))
                }
                None => File::from_source(name, schema),
            },
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The `FileDescriptorProto` a schema holds when it is one in base64
/// (`.proto` text always has spaces or `;`).
fn serialized(schema: &str) -> Option<prost_reflect::prost_types::FileDescriptorProto> {
    use base64::Engine as _;
    use prost::Message as _;
    let schema = schema.trim();
    if schema.is_empty() || schema.contains(|c: char| c.is_whitespace() || c == ';' || c == '{') {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(schema)
        .ok()?;
    prost_reflect::prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

/// `https://user:pass@host` → (`https://host`, `Basic …`).
fn split_credentials(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return (url.to_owned(), None);
    };
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(userinfo);
    (format!("{scheme}://{host}"), Some(format!("Basic {token}")))
}
