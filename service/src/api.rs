//! The API: routing, authentication, the handlers, and their audit records.

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, request::Parts};
use medinfer_core::deid::DeidKey;
use medinfer_core::{
    DecodeOptions, Image, LoadedModel, Timer, Timings, decode_array, decode_keyed, predict,
};
use serde::Serialize;

use crate::audit::{self, Event, action};
use crate::auth::{Access, Principal};
use crate::config::Config;
use crate::error::ApiError;
use crate::input::{self, ImageQuery, ImageRequest, Source};
use crate::kv::KeyValue;
use crate::models::LoadFailure;
use crate::platform::{Platform, rfc3339, uuid_v4};
use crate::results::{self, Filter, InferenceResult, round_timings};

/// The OpenAPI description served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route: method, path (`{id}` is a path parameter) and who may call it.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/health", Access::Public),
    ("GET", "/openapi.json", Access::Any),
    ("GET", "/models", Access::Read),
    ("GET", "/models/{id}", Access::Read),
    ("POST", "/infer", Access::Infer),
    ("POST", "/infer/batch", Access::Infer),
    ("GET", "/results", Access::Read),
    ("GET", "/audit", Access::Audit),
    ("GET", "/audit/verify", Access::Audit),
];

/// A request body as the host read it.
#[derive(Debug)]
pub enum Body {
    /// The whole body.
    Complete(Vec<u8>),
    /// The body exceeded [`Service::body_limit`]; the host stopped reading.
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Health,
    OpenApi,
    Models,
    Model(String),
    Infer,
    Batch,
    Results,
    Audit,
    AuditVerify,
}

impl Endpoint {
    fn access(&self) -> Access {
        match self {
            Endpoint::Health => Access::Public,
            Endpoint::OpenApi => Access::Any,
            Endpoint::Models | Endpoint::Model(_) | Endpoint::Results => Access::Read,
            Endpoint::Infer | Endpoint::Batch => Access::Infer,
            Endpoint::Audit | Endpoint::AuditVerify => Access::Audit,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Endpoint::Health => "GET /health",
            Endpoint::OpenApi => "GET /openapi.json",
            Endpoint::Models => "GET /models",
            Endpoint::Model(_) => "GET /models/{id}",
            Endpoint::Infer => "POST /infer",
            Endpoint::Batch => "POST /infer/batch",
            Endpoint::Results => "GET /results",
            Endpoint::Audit => "GET /audit",
            Endpoint::AuditVerify => "GET /audit/verify",
        }
    }
}

/// The whole API over a model registry, a configuration and a platform. Stateless between
/// requests apart from the models' plan caches: everything durable goes through the
/// [`KeyValue`] each request brings.
pub struct Service {
    config: Config,
    /// core's input limits, with the file size bound by the configured `max_body_bytes`.
    input_limits: medinfer_core::Limits,
    registry: medinfer_core::Registry,
    failures: Vec<LoadFailure>,
    platform: Box<dyn Platform>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("models", &self.registry.len()).finish_non_exhaustive()
    }
}

struct PlatformTimer<'a>(&'a dyn Platform);

impl Timer for PlatformTimer<'_> {
    fn now_ms(&self) -> f64 {
        self.0.monotonic_ms()
    }
}

/// A response as the service produces it.
pub type Reply = Response<Vec<u8>>;

fn json_response(status: StatusCode, value: &impl Serialize) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// The response for an error.
pub fn error_response(e: &ApiError) -> Reply {
    json_response(e.status, &e.body())
}

fn query_pairs(parts: &Parts) -> Vec<(String, String)> {
    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect()
}

fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn bad_query(field: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "input.invalid_query", message)
        .with_field(field)
}

fn parse_number<T: std::str::FromStr>(
    pairs: &[(String, String)],
    field: &'static str,
) -> Result<Option<T>, ApiError> {
    query_value(pairs, field)
        .map(|v| {
            v.parse().map_err(|_| bad_query(field, &format!("{field} must be a whole number")))
        })
        .transpose()
}

/// Ids and model ids used in keys: short, plain ASCII.
fn plain_id(value: &str, field: &'static str) -> Result<String, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(value.to_string())
    } else {
        Err(bad_query(field, &format!("{field} must be 1..=64 characters of [A-Za-z0-9._-]")))
    }
}

fn ms(v: f64) -> f64 {
    v.max(0.0)
}

impl Service {
    /// A service over loaded models (`failures` are reported by `/health`).
    pub fn new(
        config: Config,
        registry: medinfer_core::Registry,
        failures: Vec<LoadFailure>,
        platform: Box<dyn Platform>,
    ) -> Service {
        let input_limits = medinfer_core::Limits {
            max_bytes: config.limits.max_body_bytes,
            ..medinfer_core::Limits::default()
        };
        Service { config, input_limits, registry, failures, platform }
    }

    /// The models.
    pub fn registry(&self) -> &medinfer_core::Registry {
        &self.registry
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The most body bytes the host should read for this request; past it the host passes
    /// [`Body::TooLarge`] (the limits are exclusive, as the seed's "< 50 MB").
    pub fn body_limit(&self, method: &Method, path: &str) -> usize {
        let l = &self.config.limits;
        match (method, path) {
            (&Method::POST, "/infer") => l.max_body_bytes,
            (&Method::POST, "/infer/batch") => l.max_batch_body_bytes,
            _ => l.max_small_body_bytes,
        }
    }

    /// The pseudonym a caller-supplied patient identifier is stored under: identifiers that
    /// already are pseudonyms stay; anything else is pseudonymised with the deployment key.
    pub fn patient_pseudonym(&self, raw: &str) -> Result<String, ApiError> {
        let raw = raw.trim();
        if raw.len() > 128 || raw.chars().any(char::is_control) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "input.invalid_patient_id",
                "patient_id must be at most 128 printable characters",
            )
            .with_field("patient_id"));
        }
        Ok(if DeidKey::is_pseudonym(raw) {
            raw.to_string()
        } else {
            self.config.deid_key.pseudonym(raw)
        })
    }

    fn route(method: &Method, path: &str) -> Result<Endpoint, Box<Reply>> {
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        let endpoint = match path {
            "/health" => Endpoint::Health,
            "/openapi.json" => Endpoint::OpenApi,
            "/models" => Endpoint::Models,
            "/infer" => Endpoint::Infer,
            "/infer/batch" => Endpoint::Batch,
            "/results" => Endpoint::Results,
            "/audit" => Endpoint::Audit,
            "/audit/verify" => Endpoint::AuditVerify,
            p => match p.strip_prefix("/models/") {
                Some(id) if !id.is_empty() && !id.contains('/') => Endpoint::Model(id.to_string()),
                _ => {
                    return Err(Box::new(error_response(&ApiError::new(
                        StatusCode::NOT_FOUND,
                        "route.not_found",
                        "no such route; see /openapi.json",
                    ))));
                }
            },
        };
        let allowed = if matches!(endpoint, Endpoint::Infer | Endpoint::Batch) {
            Method::POST
        } else {
            Method::GET
        };
        if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
            let mut r = error_response(&ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "route.method_not_allowed",
                format!("this route takes {allowed}"),
            ));
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static(if allowed == Method::POST {
                    "POST"
                } else {
                    "GET, HEAD"
                }),
            );
            return Err(Box::new(r));
        }
        Ok(endpoint)
    }

    fn now(&self) -> String {
        rfc3339(self.platform.now_unix_ms())
    }

    /// Appends audit events; a store failure is returned for the caller to decide.
    async fn audit<K: KeyValue>(&self, kv: &K, events: &[Event]) -> Result<(), ApiError> {
        audit::append(kv, events, &self.now()).await.map(drop).map_err(|e| ApiError::store(&e))
    }

    /// Answers one request.
    pub async fn handle<K: KeyValue>(&self, kv: &K, parts: &Parts, body: Body) -> Reply {
        let endpoint = match Service::route(&parts.method, parts.uri.path()) {
            Ok(e) => e,
            Err(reply) => return *reply,
        };
        let access = endpoint.access();
        let principal = if access == Access::Public {
            None
        } else {
            let now_s = u64::try_from(self.platform.now_unix_ms() / 1000).unwrap_or(0);
            let authorization = parts.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
            match self.config.verifier.verify(authorization, now_s) {
                Ok(p) => Some(p),
                Err(failure) => {
                    let (error, challenge) = failure.to_error();
                    self.deny(kv, None, &error, &endpoint).await;
                    let mut r = error_response(&error);
                    if let Ok(v) = HeaderValue::from_str(&challenge) {
                        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    }
                    return r;
                }
            }
        };
        if let Some(Principal { sub, role }) = &principal
            && !role.is_some_and(|r| r.allows(access))
        {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                "auth.forbidden",
                match role {
                    Some(r) => format!("the {} role may not call {}", r.name(), endpoint.label()),
                    None => "the token carries no known role".to_string(),
                },
            );
            self.deny(kv, Some(sub.clone()), &error, &endpoint).await;
            return error_response(&error);
        }
        let user = principal.map(|p| p.sub);
        let body = match body {
            Body::Complete(b) => b,
            Body::TooLarge => {
                let limit = self.body_limit(&parts.method, parts.uri.path());
                let error = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "input.too_large",
                    format!("the body must be smaller than {limit} bytes"),
                );
                return self.failed_inference(kv, &endpoint, user, None, error).await;
            }
        };
        let result = match &endpoint {
            Endpoint::Health => Ok(self.health(kv).await),
            Endpoint::OpenApi => {
                let mut r = Response::new(OPENAPI.as_bytes().to_vec());
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(r)
            }
            Endpoint::Models => Ok(self.models()),
            Endpoint::Model(id) => self.model(id),
            Endpoint::Infer => return self.infer(kv, parts, body, user).await,
            Endpoint::Batch => return self.batch(kv, parts, &body, user).await,
            Endpoint::Results => self.results(kv, parts, user).await,
            Endpoint::Audit => self.audit_page(kv, parts, user).await,
            Endpoint::AuditVerify => self.audit_verify(kv, user).await,
        };
        result.unwrap_or_else(|e| error_response(&e))
    }

    async fn deny<K: KeyValue>(
        &self,
        kv: &K,
        user: Option<String>,
        error: &ApiError,
        endpoint: &Endpoint,
    ) {
        let event = Event {
            action: action::ACCESS_DENIED,
            user_id: user,
            detail: Some(format!("{} {}", error.code, endpoint.label())),
            ..Event::default()
        };
        // The refusal stands even if the store is down.
        let _ = self.audit(kv, &[event]).await;
    }

    /// Records a failed inference (when the route infers) and answers with `error`.
    async fn failed_inference<K: KeyValue>(
        &self,
        kv: &K,
        endpoint: &Endpoint,
        user: Option<String>,
        model_id: Option<String>,
        error: ApiError,
    ) -> Reply {
        if matches!(endpoint, Endpoint::Infer | Endpoint::Batch) {
            let event = Event {
                action: action::INFERENCE_FAILED,
                user_id: user,
                model_id,
                detail: Some(format!("{} {}", error.code, endpoint.label())),
                ..Event::default()
            };
            if let Err(store) = self.audit(kv, &[event]).await {
                return error_response(&store);
            }
        }
        error_response(&error)
    }

    async fn health<K: KeyValue>(&self, kv: &K) -> Reply {
        let store_ok = kv.get("health/ping").await.is_ok();
        let models: Vec<_> = self
            .registry
            .iter()
            .map(|m| {
                serde_json::json!({
                    "model_id": m.manifest().id,
                    "version": m.manifest().version,
                    "loaded": true,
                })
            })
            .chain(self.failures.iter().map(
                |f| serde_json::json!({"model_id": f.folder, "loaded": false, "error": f.error}),
            ))
            .collect();
        let ok = store_ok && !self.registry.is_empty();
        json_response(
            if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE },
            &serde_json::json!({
                "status": if ok { "ok" } else { "degraded" },
                "version": env!("CARGO_PKG_VERSION"),
                "models": models,
                "store": {"reachable": store_ok},
            }),
        )
    }

    fn model_version(&self, m: &LoadedModel) -> serde_json::Value {
        let manifest = m.manifest();
        serde_json::json!({
            "model_id": manifest.id,
            "version": manifest.version,
            "status": manifest.status,
            "name": manifest.name,
            "file_path": format!("models/{}/{}", manifest.id, manifest.file),
            "input_shape": manifest.input.shape,
            "output_shape": m.output_shape(),
            "sha256": m.sha256(),
            "default": self.registry.resolve(None).is_ok_and(|d| d.manifest().id == manifest.id),
        })
    }

    fn models(&self) -> Reply {
        let items: Vec<_> = self.registry.iter().map(|m| self.model_version(m)).collect();
        json_response(StatusCode::OK, &serde_json::json!({ "items": items }))
    }

    fn model(&self, id: &str) -> Result<Reply, ApiError> {
        let m = self.registry.get(id)?;
        let manifest = m.manifest();
        let mut v = self.model_version(m);
        v["description"] = manifest.description.clone().into();
        v["disclaimer"] = manifest.disclaimer.clone().into();
        v["input"] = serde_json::json!({
            "name": manifest.input.name,
            "layout": manifest.input.layout,
            "shape": manifest.input.shape,
            "channels": manifest.input.channels(),
            "height": manifest.input.height(),
            "width": manifest.input.width(),
        });
        v["preprocessing"] = serde_json::to_value(&manifest.preprocess).unwrap_or_default();
        v["output"] = serde_json::json!({
            "name": manifest.output.name,
            "activation": manifest.output.activation,
            "labels": manifest.output.labels,
        });
        Ok(json_response(StatusCode::OK, &v))
    }

    fn image_query(parts: &Parts) -> Result<ImageQuery, ApiError> {
        let pairs = query_pairs(parts);
        Ok(ImageQuery {
            model_id: query_value(&pairs, "model_id").map(str::to_string),
            patient_id: query_value(&pairs, "patient_id").map(str::to_string),
            frame: parse_number(&pairs, "frame")?,
        })
    }

    /// Decodes one image request: model, image, pseudonym, decode time.
    fn decode<'a>(&'a self, request: ImageRequest) -> Result<Prepared<'a>, Failure> {
        let model_id = request.model_id.clone();
        let fail = |e: ApiError| Failure { error: e, model_id: model_id.clone() };
        let model =
            self.registry.resolve(request.model_id.as_deref()).map_err(|e| fail(e.into()))?;
        let model_id = Some(model.manifest().id.clone());
        let fail = |e: ApiError| Failure { error: e, model_id: model_id.clone() };
        let supplied = request
            .patient_id
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(|p| self.patient_pseudonym(p))
            .transpose()
            .map_err(fail)?;
        let limits = self.input_limits;
        let t0 = self.platform.monotonic_ms();
        let (image, from_file) = match request.source {
            Source::Array(array) => {
                (Image::Display(decode_array(&array, &limits).map_err(|e| fail(e.into()))?), None)
            }
            Source::File(bytes) => {
                let options = DecodeOptions { frame: request.frame, window: None };
                let decoded = decode_keyed(&bytes, &limits, &options, Some(&self.config.deid_key))
                    .map_err(|e| fail(e.into()))?;
                (decoded.image, decoded.patient_pseudonym)
            }
        };
        let decode_ms = ms(self.platform.monotonic_ms() - t0);
        // A DICOM file's own patient wins over a supplied identifier.
        Ok(Prepared { model, image, patient_id: from_file.or(supplied), decode_ms })
    }

    fn result(
        &self,
        p: &Prepared<'_>,
        prediction: medinfer_core::Prediction,
        mut t: Timings,
        batch_id: Option<&str>,
    ) -> InferenceResult {
        t.decode_ms = p.decode_ms;
        t.total_ms += p.decode_ms;
        InferenceResult {
            inference_id: uuid_v4(&*self.platform),
            batch_id: batch_id.map(str::to_string),
            model_id: p.model.manifest().id.clone(),
            model_version: p.model.manifest().version.clone(),
            patient_id: p.patient_id.clone(),
            predictions: prediction.predictions,
            top_label: prediction.top_label,
            confidence_score: prediction.confidence_score,
            created_at: self.now(),
            timing_ms: round_timings(t),
            record_hash: String::new(),
        }
        .seal()
    }

    async fn infer<K: KeyValue>(
        &self,
        kv: &K,
        parts: &Parts,
        body: Vec<u8>,
        user: Option<String>,
    ) -> Reply {
        let outcome = Service::image_query(parts)
            .and_then(|q| input::parse_single(&parts.headers, body, &q))
            .map_err(|error| Failure { error, model_id: None })
            .and_then(|request| self.decode(request))
            .and_then(|prepared| {
                let timer = PlatformTimer(&*self.platform);
                let mut out = predict(prepared.model, &[&prepared.image], 1, &timer)
                    .map_err(|e| Failure { error: e.into(), model_id: prepared.model_id() })?;
                let (prediction, timings) = out.remove(0);
                Ok(self.result(&prepared, prediction, timings, None))
            });
        let result = match outcome {
            Ok(r) => r,
            Err(f) => {
                return self
                    .failed_inference(kv, &Endpoint::Infer, user, f.model_id, f.error)
                    .await;
            }
        };
        if let Err(e) = results::store(kv, std::slice::from_ref(&result)).await {
            return error_response(&ApiError::store(&e));
        }
        let event = Event {
            action: action::INFERENCE_COMPLETED,
            user_id: user,
            model_id: Some(result.model_id.clone()),
            inference_id: Some(result.inference_id.clone()),
            ..Event::default()
        };
        if let Err(e) = self.audit(kv, &[event]).await {
            return error_response(&e);
        }
        json_response(StatusCode::OK, &result)
    }

    async fn batch<K: KeyValue>(
        &self,
        kv: &K,
        parts: &Parts,
        body: &[u8],
        user: Option<String>,
    ) -> Reply {
        let t0 = self.platform.monotonic_ms();
        let batch =
            match input::parse_batch(&parts.headers, body, self.config.limits.max_batch_items) {
                Ok(b) => b,
                Err(e) => return self.failed_inference(kv, &Endpoint::Batch, user, None, e).await,
            };
        let batch_id = uuid_v4(&*self.platform);
        let total = batch.items.len();
        // Decoded several at a time where the process runs a thread pool (the native server).
        let prepared: Vec<Result<Prepared<'_>, Failure>> =
            medinfer_core::map_on_pool(batch.items, |item| {
                item.map_err(|error| Failure { error, model_id: None }).and_then(|r| self.decode(r))
            });

        // Run each model over its images, `batch_chunk` at a time.
        let mut outcomes: Vec<Option<Result<InferenceResult, Failure>>> =
            (0..total).map(|_| None).collect();
        let mut by_model: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            match p {
                Ok(p) => {
                    let id = p.model.manifest().id.as_str();
                    match by_model.iter_mut().find(|(m, _)| *m == id) {
                        Some((_, v)) => v.push(i),
                        None => by_model.push((id, vec![i])),
                    }
                }
                Err(f) => outcomes[i] = Some(Err(f.clone())),
            }
        }
        let timer = PlatformTimer(&*self.platform);
        let chunk = self.config.limits.batch_chunk;
        for (_, indices) in &by_model {
            for part in indices.chunks(chunk) {
                let ready: Vec<&Prepared<'_>> =
                    part.iter().filter_map(|&i| prepared[i].as_ref().ok()).collect();
                let model = ready[0].model;
                let images: Vec<&Image> = ready.iter().map(|p| &p.image).collect();
                match predict(model, &images, chunk, &timer) {
                    Ok(out) => {
                        for ((&i, p), (prediction, t)) in part.iter().zip(&ready).zip(out) {
                            outcomes[i] = Some(Ok(self.result(p, prediction, t, Some(&batch_id))));
                        }
                    }
                    Err(e) => {
                        let error: ApiError = e.into();
                        for (&i, p) in part.iter().zip(&ready) {
                            outcomes[i] =
                                Some(Err(Failure { error: error.clone(), model_id: p.model_id() }));
                        }
                    }
                }
            }
        }

        let stored: Vec<InferenceResult> =
            outcomes.iter().flatten().filter_map(|o| o.as_ref().ok()).cloned().collect();
        if let Err(e) = results::store(kv, &stored).await {
            return error_response(&ApiError::store(&e));
        }
        let mut events = Vec::with_capacity(total + 1);
        let mut items = Vec::with_capacity(total);
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Some(Ok(result)) => {
                    events.push(Event {
                        action: action::INFERENCE_COMPLETED,
                        user_id: user.clone(),
                        model_id: Some(result.model_id.clone()),
                        inference_id: Some(result.inference_id.clone()),
                        batch_id: Some(batch_id.clone()),
                        detail: None,
                    });
                    items.push(raw(&BatchItem { index, result }));
                }
                Some(Err(f)) => {
                    events.push(Event {
                        action: action::INFERENCE_FAILED,
                        user_id: user.clone(),
                        model_id: f.model_id,
                        batch_id: Some(batch_id.clone()),
                        detail: Some(format!("{} item {index}", f.error.code)),
                        ..Event::default()
                    });
                    let mut item = serde_json::json!({"index": index});
                    item["error"] = f.error.body()["error"].take();
                    items.push(raw(&item));
                }
                None => {}
            }
        }
        let successful = stored.len();
        let failed = total - successful;
        events.push(Event {
            action: action::BATCH_COMPLETED,
            user_id: user,
            batch_id: Some(batch_id.clone()),
            detail: Some(format!(
                "priority={} total={total} successful={successful} failed={failed}",
                batch.priority
            )),
            ..Event::default()
        });
        let summary = serde_json::json!({
            "batch_id": batch_id,
            "total_images": total,
            "successful": successful,
            "failed": failed,
            "priority": batch.priority,
            "created_at": self.now(),
            "total_ms": (ms(self.platform.monotonic_ms() - t0) * 1000.0).round() / 1000.0,
        });
        if let Err(e) = kv
            .set(&format!("batch/{batch_id}"), &serde_json::to_vec(&summary).unwrap_or_default())
            .await
        {
            return error_response(&ApiError::store(&e));
        }
        if let Err(e) = self.audit(kv, &events).await {
            return error_response(&e);
        }
        json_response(StatusCode::OK, &BatchResponse { summary, items })
    }

    async fn results<K: KeyValue>(
        &self,
        kv: &K,
        parts: &Parts,
        user: Option<String>,
    ) -> Result<Reply, ApiError> {
        let pairs = query_pairs(parts);
        let id =
            |name: &'static str| query_value(&pairs, name).map(|v| plain_id(v, name)).transpose();
        let filter = Filter {
            inference_id: id("inference_id")?,
            batch_id: id("batch_id")?,
            model_id: id("model_id")?,
            patient_id: query_value(&pairs, "patient_id")
                .map(|p| self.patient_pseudonym(p))
                .transpose()?,
        };
        let limit = self.page_limit(&pairs)?;
        let cursor = parse_number::<u64>(&pairs, "cursor")?;
        let (items, next) =
            results::query(kv, &filter, limit, cursor).await.map_err(|e| ApiError::store(&e))?;
        self.audit(
            kv,
            &[Event {
                action: action::RESULTS_READ,
                user_id: user,
                model_id: filter.model_id.clone(),
                inference_id: filter.inference_id.clone(),
                batch_id: filter.batch_id.clone(),
                detail: Some(format!("items={}", items.len())),
            }],
        )
        .await?;
        Ok(json_response(StatusCode::OK, &Page { items, next_cursor: next.map(|n| n.to_string()) }))
    }

    fn page_limit(&self, pairs: &[(String, String)]) -> Result<usize, ApiError> {
        let max = self.config.limits.max_page;
        match parse_number::<usize>(pairs, "limit")? {
            None => Ok(100.min(max)),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(bad_query("limit", &format!("limit must be in 1..={max}"))),
        }
    }

    async fn audit_page<K: KeyValue>(
        &self,
        kv: &K,
        parts: &Parts,
        user: Option<String>,
    ) -> Result<Reply, ApiError> {
        let pairs = query_pairs(parts);
        let limit = self.page_limit(&pairs)?;
        let cursor = parse_number::<u64>(&pairs, "cursor")?.unwrap_or(1);
        let (items, next) =
            audit::page(kv, cursor, limit).await.map_err(|e| ApiError::store(&e))?;
        self.audit(
            kv,
            &[Event {
                action: action::AUDIT_READ,
                user_id: user,
                detail: Some(format!("items={}", items.len())),
                ..Event::default()
            }],
        )
        .await?;
        Ok(json_response(StatusCode::OK, &Page { items, next_cursor: next.map(|n| n.to_string()) }))
    }

    async fn audit_verify<K: KeyValue>(
        &self,
        kv: &K,
        user: Option<String>,
    ) -> Result<Reply, ApiError> {
        let v = audit::verify(kv).await.map_err(|e| ApiError::store(&e))?;
        self.audit(
            kv,
            &[Event {
                action: action::AUDIT_VERIFIED,
                user_id: user,
                detail: Some(format!("valid={} records={}", v.valid, v.records)),
                ..Event::default()
            }],
        )
        .await?;
        Ok(json_response(StatusCode::OK, &v))
    }
}

/// Serialises with the value's own number formatting (f32 scores stay short).
fn raw(value: &impl Serialize) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

/// A page of `/results` or `/audit`.
#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

#[derive(Serialize)]
struct BatchResponse {
    #[serde(flatten)]
    summary: serde_json::Value,
    items: Vec<Box<serde_json::value::RawValue>>,
}

#[derive(Serialize)]
struct BatchItem {
    index: usize,
    #[serde(flatten)]
    result: InferenceResult,
}

/// A decoded image ready for its model.
struct Prepared<'a> {
    model: &'a LoadedModel,
    image: Image,
    patient_id: Option<String>,
    decode_ms: f64,
}

impl Prepared<'_> {
    fn model_id(&self) -> Option<String> {
        Some(self.model.manifest().id.clone())
    }
}

/// An error and the model it concerned, for the audit record.
#[derive(Debug, Clone)]
struct Failure {
    error: ApiError,
    model_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openapi.json documents exactly the routes the router serves, with their security.
    #[test]
    fn openapi_matches_the_router() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let public = op.get("security").is_some_and(|s| s.as_array().unwrap().is_empty());
                documented.push((method.to_uppercase(), path.clone(), public));
            }
        }
        let mut served: Vec<_> = ROUTES
            .iter()
            .map(|(m, p, a)| (m.to_string(), p.to_string(), *a == Access::Public))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        for (method, path, _) in ROUTES {
            let concrete = path.replace("{id}", "some-model");
            let endpoint = Service::route(&method.parse().unwrap(), &concrete).unwrap();
            let (_, _, access) = ROUTES.iter().find(|(_, p, _)| p == path).unwrap();
            assert_eq!(endpoint.access(), *access, "{path}");
        }
    }
}
