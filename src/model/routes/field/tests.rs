use std::str::FromStr;

use serde_json::json;

use super::*;

fn field(ty: FieldType, value: &str) -> Field {
    Field {
        name: "f".into(),
        ty,
        value: Template::parse(value).unwrap(),
        when: None,
        default: None,
        optional: false,
        map: None,
    }
}

struct Req {
    parents: Vec<EntityUid>,
    captures: Vec<(&'static str, String)>,
    query: &'static str,
    claims: Claims,
    body: Option<Value>,
    tls: Option<TlsClient>,
}

impl Req {
    fn new() -> Req {
        Req {
            parents: vec![
                EntityUid::from_str(r#"T::Org::"emea""#).unwrap(),
                EntityUid::from_str(r#"T::Team::"a""#).unwrap(),
                EntityUid::from_str(r#"T::Team::"b""#).unwrap(),
            ],
            captures: vec![
                ("owner", "alice".into()),
                ("device", "d1".into()),
                ("n", "42".into()),
            ],
            query: "q=hello&num=7&flag=true&bad=%FF",
            claims:
                json!({"usr": "alice", "dev": "d9", "res": ["temp", "hum"], "n": 3, "nul": null})
                    .as_object()
                    .unwrap()
                    .clone(),
            body: Some(
                json!({"role": "user", "org": {"id": "eu"}, "count": 5, "on": true, "tags": ["a", 1],
                        "on_text": "true", "count_text": "5", "gone": null, "Case": "x"}),
            ),
            tls: Some(TlsClient {
                subject: "CN=sensor-7, O=Acme".into(),
                cn: Some("sensor-7".into()),
            }),
        }
    }

    fn resolve(&self, f: &Field) -> Result<Option<FieldValue>, FieldError> {
        let inputs = Inputs {
            captures: &self.captures,
            query: Query::new(Some(self.query)),
            claims: &self.claims,
            body: self.body.as_ref(),
            principal_parents: &|| self.parents.clone(),
            tls: self.tls.as_ref(),
        };
        f.resolve(&inputs)
    }
}

fn entity_type(t: &str) -> FieldType {
    FieldType::Entity(EntityTypeName::from_str(t).unwrap())
}

fn s(v: &str) -> Option<FieldValue> {
    Some(FieldValue::Str(v.into()))
}

#[test]
fn resolution_table() {
    let r = Req::new();
    let uid = |t: &str| FieldValue::Entity(EntityUid::from_str(t).unwrap());
    let set = |v: &[&str]| Some(FieldValue::Set(v.iter().map(|s| s.to_string()).collect()));
    let type_err = |e| {
        Err(FieldError::Type {
            field: "f".into(),
            expected: e,
        })
    };
    let cases: Vec<(Field, Result<Option<FieldValue>, FieldError>)> = vec![
        (field(FieldType::String, "{owner}"), Ok(s("alice"))),
        (
            field(FieldType::String, "{owner}/{device}"),
            Ok(s("alice/d1")),
        ),
        (field(FieldType::String, "literal"), Ok(s("literal"))),
        (field(FieldType::String, "{query.q}"), Ok(s("hello"))),
        (field(FieldType::String, "{claim.dev}"), Ok(s("d9"))),
        (
            field(FieldType::String, "{tls.subject}"),
            Ok(s("CN=sensor-7, O=Acme")),
        ),
        (
            field(FieldType::String, "dev-{tls.cn}"),
            Ok(s("dev-sensor-7")),
        ),
        (field(FieldType::String, "{body.role}"), Ok(s("user"))),
        (field(FieldType::String, "{body.org.id}"), Ok(s("eu"))),
        (
            field(entity_type("T::Device"), "{claim.usr}/{claim.dev}"),
            Ok(Some(uid(r#"T::Device::"alice/d9""#))),
        ),
        (
            field(FieldType::Long, "{n}"),
            Ok(Some(FieldValue::Long(42))),
        ),
        (
            field(FieldType::Long, "{query.num}"),
            Ok(Some(FieldValue::Long(7))),
        ),
        (
            field(FieldType::Long, "{body.count}"),
            Ok(Some(FieldValue::Long(5))),
        ),
        (
            field(FieldType::Long, "{claim.n}"),
            Ok(Some(FieldValue::Long(3))),
        ),
        (
            field(FieldType::Bool, "{query.flag}"),
            Ok(Some(FieldValue::Bool(true))),
        ),
        (
            field(FieldType::Bool, "{body.on}"),
            Ok(Some(FieldValue::Bool(true))),
        ),
        (
            field(FieldType::Set, "{claim.res}"),
            Ok(set(&["hum", "temp"])),
        ),
        (field(FieldType::Set, "{claim.dev}"), Ok(set(&["d9"]))),
        (
            field(entity_type("T::Org"), "{principal.parent.Org}"),
            Ok(Some(uid(r#"T::Org::"emea""#))),
        ),
        (
            field(entity_type("T::Org"), "{principal.parent.T::Org}"),
            Ok(Some(uid(r#"T::Org::"emea""#))),
        ),
        (
            field(FieldType::String, "{principal.parent.Team}"),
            Err(FieldError::Ambiguous("Team".into())),
        ),
        (
            field(FieldType::String, "{principal.parent.Nope}"),
            Err(FieldError::Missing("f".into())),
        ),
        // wrong types
        (
            field(FieldType::Long, "{owner}"),
            type_err("a whole number"),
        ),
        (
            field(FieldType::Bool, "{body.count}"),
            type_err("true or false"),
        ),
        (
            field(FieldType::Set, "{body.tags}"),
            type_err("a list of strings"),
        ),
        (field(FieldType::String, "{body.org}"), type_err("a string")),
        (
            field(FieldType::String, "x{claim.res}"),
            type_err("a string"),
        ),
        // absent values
        (
            field(FieldType::String, "{body.nope}"),
            Err(FieldError::Missing("f".into())),
        ),
        // JSON keeps its types: a string is not a bool or a number, null is not absent
        (
            field(FieldType::Bool, "{body.on_text}"),
            type_err("true or false"),
        ),
        (
            field(FieldType::Long, "{body.count_text}"),
            type_err("a whole number"),
        ),
        (
            field(FieldType::Bool, "{body.gone}"),
            type_err("true or false"),
        ),
        (
            field(FieldType::String, "{body.gone}"),
            type_err("a string"),
        ),
        (
            field(FieldType::String, "{claim.nul}"),
            type_err("a string"),
        ),
        // a key another case would read
        (
            field(FieldType::String, "{body.case}"),
            Err(FieldError::KeyCase {
                expected: "case".into(),
                found: "Case".into(),
            }),
        ),
        (
            field(FieldType::String, "{query.zzz}"),
            Err(FieldError::Missing("f".into())),
        ),
        (
            field(FieldType::String, "{query.bad}"),
            Err(FieldError::Query(QueryError::BadEncoding("bad".into()))),
        ),
    ];
    for (f, want) in cases {
        assert_eq!(r.resolve(&f), want, "{:?}", f.value);
    }
}

#[test]
fn when_default_optional_and_map() {
    let r = Req::new();
    let mut kind = field(FieldType::String, "device");
    kind.when = Template::parse("{claim.dev}").unwrap().single().cloned();
    kind.default = s("user");
    assert_eq!(r.resolve(&kind), Ok(s("device")));
    let mut no_dev = Req::new();
    no_dev.claims.remove("dev");
    assert_eq!(no_dev.resolve(&kind), Ok(s("user")));

    let mut opt = field(FieldType::Set, "{claim.missing}");
    opt.optional = true;
    assert_eq!(r.resolve(&opt), Ok(None));

    let mut role = field(FieldType::String, "{body.role}");
    role.map = Some(
        [("user", "developer"), ("member", "user")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    );
    assert_eq!(r.resolve(&role), Ok(s("developer")));
    let mut other = Req::new();
    other.body = Some(json!({"role": "root"}));
    assert_eq!(
        other.resolve(&role),
        Err(FieldError::Unmapped {
            field: "f".into(),
            value: "root".into()
        })
    );
    // no body at all: absent, not an error
    other.body = None;
    assert_eq!(other.resolve(&role), Err(FieldError::Missing("f".into())));
}

#[test]
fn template_syntax() {
    for bad in [
        "{",
        "}",
        "{a",
        "a}",
        "{body.}",
        "{claim}x{",
        "{1x}",
        "{x.y}",
        "{query.}",
        "{tls.issuer}",
    ] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
    let t = Template::parse("{owner}@{body.project.id}").unwrap();
    let sources: Vec<_> = t.sources().cloned().collect();
    assert_eq!(
        sources,
        vec![
            Source::Capture("owner".into()),
            Source::Body(vec!["project".into(), "id".into()])
        ]
    );
}

#[test]
fn values_become_cedar_expressions() {
    let set = FieldValue::Set(["b".to_string(), "a".to_string()].into_iter().collect());
    assert_eq!(
        format!("{:?}", set.to_expr()),
        format!(
            "{:?}",
            RestrictedExpression::new_set(
                ["a", "b"].map(|v| RestrictedExpression::new_string(v.into()))
            )
        )
    );
    assert_eq!(
        format!("{:?}", FieldValue::Long(-3).to_expr()),
        format!("{:?}", RestrictedExpression::new_long(-3))
    );
}
