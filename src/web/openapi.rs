//! `GET /api/v1/openapi.json`: an OpenAPI 3.0 document built from the same route table as the
//! router, so it lists exactly the routes served (a test walks both).

use serde_json::{Map, Value, json};

/// The document: each route with its path parameters and the answers it gives.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in super::api::routes() {
        let parameters: Vec<Value> = path_parameters(route.path)
            .into_iter()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut responses = json!({
            "200": {"description": "Success."},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "404": {"$ref": "#/components/responses/NotFound"},
        });
        if route.method == "post" && route.path.ends_with("/dagRuns") {
            responses["409"] = json!({"$ref": "#/components/responses/AlreadyExists"});
        }
        if route.path != "/api/v1/health" {
            responses["401"] = json!({"$ref": "#/components/responses/Unauthenticated"});
        }
        if route.role > super::auth::Role::Viewer {
            responses["403"] = json!({"$ref": "#/components/responses/PermissionDenied"});
        }
        let mut operation = json!({
            "summary": route.summary,
            "operationId": operation_id(route.method, route.path),
            "parameters": parameters,
            "responses": responses,
        });
        if route.path == "/api/v1/health" {
            operation["security"] = json!([]);
        }
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.to_string(), operation);
        }
    }
    let problem = json!({"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let with = |description: &str| {
        let mut r = problem.clone();
        r["description"] = json!(description);
        r
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "rhaiflow REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Airflow 2's stable REST API (/api/v1), as rhaiflow serves it. With `[webserver] auth = \"password\"` every route but /api/v1/health takes HTTP basic auth (users of `rhaiflow users`): viewers read, operators also act, admins also manage users. Without it the server binds 127.0.0.1 and asks nobody.",
        },
        "security": [{"basic": []}],
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "number"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                    },
                },
            },
            "responses": {
                "BadRequest": with("Client specified an invalid argument."),
                "NotFound": with("A specified resource is not found."),
                "AlreadyExists": with("An existing resource conflicts with the request."),
                "Unauthenticated": with("Request not authenticated due to missing, invalid, authentication info."),
                "PermissionDenied": with("Client does not have sufficient permission."),
            },
        },
    })
}

/// The `{name}`s of a path, in order.
fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// `get_dags_dag_id_dagRuns`: unique per method and path.
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> =
        path.trim_start_matches("/api/v1/").split('/').map(|s| s.trim_matches(|c| c == '{' || c == '}')).collect();
    format!("{method}_{}", words.join("_"))
}
