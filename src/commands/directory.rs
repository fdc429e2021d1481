//! `iotgate directory`: the entity API of a running gateway from the command line.
//!
//! ```text
//! config ─▶ admin_listen + [admin] token_file ─▶ GET/PUT/DELETE /directory/entities/{type}/{id}
//!        ─▶ the answer's JSON on stdout; exit 0 (2xx), 1 (refused), 2 (problem)
//! ```
//! `disable-user ID` reads the account and puts it back with `enabled = false`.

use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::commands::cli::{DirectoryArgs, DirectoryOp, ExitStatus};
use crate::config::Config;

/// Runs `directory`.
pub(crate) async fn run(args: &DirectoryArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    match call(args).await {
        Ok((status, body)) => {
            writeln!(out, "{body}")?;
            Ok(match status.is_success() {
                true => ExitStatus::Ok,
                false => ExitStatus::Failed,
            })
        }
        Err(message) => {
            writeln!(out, "error: {message}")?;
            Ok(ExitStatus::Error)
        }
    }
}

/// The admin listener's address (`--admin`, else the config's) and the token.
fn target(config: &Config, given: Option<&str>) -> Result<(String, String), String> {
    let admin = match given {
        Some(addr) => addr.to_string(),
        None => config
            .server
            .as_ref()
            .and_then(|s| s.admin_listen)
            .ok_or("the config has no `admin_listen`; give --admin")?
            .to_string(),
    };
    let path = config
        .admin
        .token_file
        .as_ref()
        .ok_or("the config has no [admin] token_file")?;
    let token = crate::config::problem::read_text(path).map_err(|p| p.to_string())?;
    Ok((format!("http://{admin}"), token.trim().to_string()))
}

async fn call(args: &DirectoryArgs) -> Result<(http::StatusCode, Value), String> {
    let config = Config::load(&args.config.config).map_err(|p| p.to_string())?;
    let (base, token) = target(&config, args.admin.as_deref())?;
    let entity =
        |ty: &str, id: &str| format!("{base}/directory/entities/{}/{}", escape(ty), escape(id));
    let send = |method: &str, url: String, body: Option<String>| {
        let token = token.clone();
        let method = method.to_string();
        async move { request(&method, &url, &token, body).await }
    };
    match &args.op {
        DirectoryOp::Get { entity_type, id } => send("GET", entity(entity_type, id), None).await,
        DirectoryOp::Delete { entity_type, id } => {
            send("DELETE", entity(entity_type, id), None).await
        }
        DirectoryOp::Put {
            entity_type,
            id,
            json,
        } => {
            serde_json::from_str::<Value>(json).map_err(|e| format!("not JSON: {e}"))?;
            send("PUT", entity(entity_type, id), Some(json.clone())).await
        }
        DirectoryOp::DisableUser { id } => {
            let snapshot =
                crate::authz::snapshot::Snapshot::load(&config).map_err(|p| p.to_string())?;
            let ty = snapshot.routes.principal_type.to_string();
            let (status, mut current) = send("GET", entity(&ty, id), None).await?;
            if !status.is_success() {
                return Ok((status, current));
            }
            current["attrs"]["enabled"] = Value::Bool(false);
            let body =
                serde_json::json!({"attrs": current["attrs"], "parents": current["parents"]});
            send("PUT", entity(&ty, id), Some(body.to_string())).await
        }
    }
}

/// Percent-encodes what a path segment cannot carry as is.
fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'@' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn request(
    method: &str,
    url: &str,
    token: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, Value), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
            .await
            .map_err(|_| "the admin listener did not answer in 30 s".to_string())?
            .map_err(|e| format!("cannot reach the admin listener at {url}: {e}"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, body))
}
