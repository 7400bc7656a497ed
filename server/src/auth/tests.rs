use super::policy::{Policy, Unplaced};
use super::*;

const ORDERS_TOKEN: &str = "orders-secret";
const AUDIT_SUBJECT: &str = "CN=audit";

fn file_text() -> String {
    format!(
        r#"
[[principal]]
name = "orders"
token_sha256 = "{orders}"

[[principal]]
name = "audit"
cert_subject = "{AUDIT_SUBJECT}"

[[grant]]
principal = "orders"
actions = ["publish"]
topics = ["order.*", "invoice"]

[[grant]]
principal = "orders"
actions = ["subscribe", "admin"]
subscriptions = ["orders-{{a,b}}"]

[[grant]]
principal = "*"
actions = ["subscribe"]
topics = ["public.?"]
"#,
        orders = token_sha256(ORDERS_TOKEN),
    )
}

fn authorizer(text: &str) -> (tempfile::TempDir, Authorizer) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, text).expect("written");
    let auth = Authorizer::load(&path).expect("loads");
    (dir, auth)
}

fn parse_error(text: &str) -> String {
    match Policy::parse(text).expect_err("must be refused") {
        Unplaced::Syntax(message) => message,
        Unplaced::Entry { entry, message } => format!("{entry}: {message}"),
    }
}

#[test]
fn patterns_match_whole_names() {
    let (_dir, auth) = authorizer(&file_text());
    let orders = auth.caller(Some(ORDERS_TOKEN), None).expect("known");
    assert_eq!(orders.principal(), Some("orders"));
    assert_eq!(orders.publish("order.created"), Ok(()));
    assert_eq!(orders.publish("invoice"), Ok(()));
    assert!(orders.publish("order").is_err(), "`*` follows the dot");
    assert!(orders.publish("invoices").is_err(), "a plain name is exact");
    assert!(
        orders.publish("x.order.created").is_err(),
        "anchored at the start"
    );
    assert_eq!(orders.subscribe(Resource::Subscription("orders-a")), Ok(()));
    assert_eq!(orders.admin(Resource::Subscription("orders-b")), Ok(()));
    assert!(
        orders
            .subscribe(Resource::Subscription("orders-c"))
            .is_err()
    );
    assert!(
        orders.subscribe(Resource::Topic("order.created")).is_err(),
        "publish on a topic is not subscribe"
    );
    assert!(
        orders.admin(Resource::Topic("order.created")).is_err(),
        "admin on subscriptions is not admin on topics"
    );
}

#[test]
fn a_grant_to_star_reaches_every_principal() {
    let (_dir, auth) = authorizer(&file_text());
    for caller in [
        auth.caller(Some(ORDERS_TOKEN), None).expect("by token"),
        auth.caller(None, Some(AUDIT_SUBJECT)).expect("by subject"),
    ] {
        assert_eq!(caller.subscribe(Resource::Topic("public.x")), Ok(()));
        assert!(caller.subscribe(Resource::Topic("public.xy")).is_err());
    }
}

#[test]
fn denial_names_principal_action_and_resource() {
    let (_dir, auth) = authorizer(&file_text());
    let audit = auth.caller(None, Some(AUDIT_SUBJECT)).expect("by subject");
    let err = audit.publish("order.created").expect_err("not granted");
    assert_eq!(
        err.to_string(),
        "principal \"audit\" has no publish grant on topic \"order.created\""
    );
    let err = audit
        .either([Action::Subscribe, Action::Admin], Resource::Topic("t"))
        .expect_err("not granted");
    assert!(
        err.to_string().contains("no subscribe or admin grant"),
        "{err}"
    );
}

#[test]
fn listings_see_what_any_grant_names() {
    let (_dir, auth) = authorizer(&file_text());
    let orders = auth.caller(Some(ORDERS_TOKEN), None).expect("known");
    assert!(orders.sees(Resource::Topic("order.created")));
    assert!(orders.sees(Resource::Topic("public.a")));
    assert!(orders.sees(Resource::Subscription("orders-a")));
    assert!(!orders.sees(Resource::Topic("payments")));
    assert!(!orders.sees(Resource::Subscription("payments")));
}

#[test]
fn credentials_must_name_a_principal() {
    let (_dir, auth) = authorizer(&file_text());
    for (token, subject) in [
        (None, None),
        (Some("wrong"), None),
        (None, Some("CN=nobody")),
        // A token decides, even beside a known subject.
        (Some("wrong"), Some(AUDIT_SUBJECT)),
    ] {
        let err = auth.caller(token, subject).expect_err("refused");
        assert!(matches!(err, AuthError::Unauthenticated(_)), "{err:?}");
    }
}

#[test]
fn an_open_authorizer_allows_everything_without_credentials() {
    let caller = Authorizer::open().caller(None, None).expect("open");
    assert!(caller.is_open());
    assert_eq!(caller.publish("anything"), Ok(()));
    assert_eq!(caller.admin(Resource::Subscription("any")), Ok(()));
    assert!(caller.sees(Resource::Topic("any")));
}

#[test]
fn reload_takes_a_valid_file_and_keeps_the_old_policy_on_a_bad_one() {
    let (dir, auth) = authorizer(&file_text());
    let path = dir.path().join("auth.toml");
    let before = auth.caller(Some(ORDERS_TOKEN), None).expect("known");
    std::fs::write(&path, file_text().replace("\"invoice\"", "\"bill\"")).expect("written");
    auth.reload().expect("a valid file reloads");
    let after = auth.caller(Some(ORDERS_TOKEN), None).expect("known");
    assert!(after.publish("invoice").is_err());
    assert_eq!(after.publish("bill"), Ok(()));
    assert_eq!(
        before.publish("invoice"),
        Ok(()),
        "a request under way keeps the policy it started with"
    );
    std::fs::write(&path, "[[principal]]\nname = 3\n").expect("written");
    let err = auth.reload().expect_err("a bad file is refused");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let kept = auth.caller(Some(ORDERS_TOKEN), None).expect("still known");
    assert_eq!(kept.publish("bill"), Ok(()), "the old policy stays");
}

#[test]
fn errors_name_the_file_and_the_entry() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("auth.toml");
    std::fs::write(
        &path,
        "[[grant]]\nprincipal = \"ghost\"\nactions = [\"publish\"]\ntopics = [\"t\"]\n",
    )
    .expect("written");
    let err = Authorizer::load(&path).expect_err("refused").to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("grant 1 (principal \"ghost\")"), "{err}");
    let missing = dir.path().join("missing.toml");
    let err = Authorizer::load(&missing).expect_err("refused").to_string();
    assert!(err.contains("cannot read the auth file"), "{err}");
}

#[test]
fn parser_refuses_what_would_hide_a_mistake() {
    let hash = token_sha256("t");
    let principal = format!("[[principal]]\nname = \"p\"\ntoken_sha256 = \"{hash}\"\n");
    for (text, expected) in [
        (format!("{principal}tokn = \"x\"\n"), "unknown field `tokn`"),
        (
            "[[principals]]\nname = \"p\"\n".to_owned(),
            "unknown field `principals`",
        ),
        (
            "[[principal]]\nname = \"p\"\ntoken_sha256 = \"abc\"\n".to_owned(),
            "principal \"p\": token_sha256 must be 64 hex digits",
        ),
        (
            format!(
                "[[principal]]\nname = \"p\"\ntoken_sha256 = \"{}\"\n",
                "zz".repeat(32)
            ),
            "64 hex digits",
        ),
        (
            format!(
                "{principal}[[grant]]\nprincipal = \"p\"\nactions = [\"read\"]\ntopics = [\"t\"]\n"
            ),
            "unknown variant `read`",
        ),
        (
            format!(
                "{principal}[[grant]]\nprincipal = \"q\"\nactions = [\"admin\"]\ntopics = [\"t\"]\n"
            ),
            "grant 1 (principal \"q\"): no [[principal]] has this name",
        ),
        (
            format!("{principal}[[grant]]\nprincipal = \"p\"\nactions = []\ntopics = [\"t\"]\n"),
            "actions is empty",
        ),
        (
            format!("{principal}[[grant]]\nprincipal = \"p\"\nactions = [\"admin\"]\n"),
            "grants nothing",
        ),
        (
            format!(
                "{principal}[[grant]]\nprincipal = \"p\"\nactions = [\"admin\"]\ntopics = [\"a[\"]\n"
            ),
            "topics pattern \"a[\" is not valid",
        ),
        (
            format!("{principal}{principal}"),
            "principal \"p\": the name is defined twice",
        ),
        (
            format!("{principal}[[principal]]\nname = \"q\"\ntoken_sha256 = \"{hash}\"\n"),
            "also principal \"p\"'s",
        ),
        (
            "[[principal]]\nname = \"p\"\n".to_owned(),
            "give token_sha256 or cert_subject",
        ),
        (
            "[[principal]]\nname = \"*\"\ncert_subject = \"CN=x\"\n".to_owned(),
            "other than",
        ),
    ] {
        let err = parse_error(&text);
        assert!(
            err.contains(expected),
            "{text}\n=> {err}\nlacks {expected:?}"
        );
    }
}

#[test]
fn an_empty_file_denies_everything() {
    let (_dir, auth) = authorizer("");
    assert!(auth.caller(Some("any"), None).is_err());
}

#[test]
fn tokens_are_new_each_time_and_hash_as_documented() {
    let (token, hash) = new_token();
    assert_eq!(token.len(), 64);
    assert_eq!(hash, token_sha256(&token));
    assert_ne!(new_token().0, token);
    // The SHA-256 of "test", a published test vector.
    assert_eq!(
        token_sha256("test"),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn bearer_tokens_are_read_from_the_header_value() {
    assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
    assert_eq!(bearer_token("bearer  abc "), Ok("abc"));
    assert!(bearer_token("Basic abc").is_err());
    assert!(bearer_token("Bearer ").is_err());
    assert!(bearer_token("abc").is_err());
}
