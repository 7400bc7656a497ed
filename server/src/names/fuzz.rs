//! Property tests: any text is a valid name or refused with a message
//! that says why, and a name is exactly what the rule allows. 256 cases;
//! `PROPTEST_CASES=10000 cargo test -p tidings-server --lib names::fuzz`
//! runs more.

use proptest::prelude::*;

use super::*;

/// The rule, written apart from `validate`.
fn allowed(text: &str) -> bool {
    let mut chars = text.chars();
    (1..=MAX_NAME_LEN).contains(&text.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

proptest! {
    #[test]
    fn any_text_is_a_name_or_refused_clearly(
        text in prop_oneof!["[a-zA-Z0-9._-]{0,260}", "\\PC{0,40}", "[a-z]{250,260}"],
    ) {
        match (TopicName::new(text.clone()), SubscriptionName::new(text.clone())) {
            (Ok(topic), Ok(subscription)) => {
                prop_assert!(allowed(&text), "{:?}", text);
                prop_assert_eq!(topic.as_str(), text.as_str());
                prop_assert_eq!(subscription.as_str(), text.as_str());
            }
            (Err(topic), Err(subscription)) => {
                prop_assert!(!allowed(&text), "{:?}: {}", text, topic);
                prop_assert!(topic.to_string().contains("topic"), "{}", topic);
                prop_assert!(subscription.to_string().contains("subscription"), "{}", subscription);
            }
            (topic, subscription) => prop_assert!(false, "{:?} {:?}", topic, subscription),
        }
    }
}
