use proptest::prelude::*;

use super::*;

fn attributes(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn parsed(text: &str) -> Filter {
    match Filter::parse(text) {
        Ok(Some(filter)) => filter,
        Ok(None) => panic!("{text:?} parsed as no filter"),
        Err(err) => panic!("{text:?} did not parse: {err}"),
    }
}

#[test]
fn expressions_against_attribute_sets() {
    let order = attributes(&[("kind", "order"), ("region", "eu-west"), ("a.b/c", "x y")]);
    let refund = attributes(&[("kind", "refund"), ("priority", "")]);
    let none = attributes(&[]);
    // (filter, matches order, matches refund, matches none)
    let table: &[(&str, bool, bool, bool)] = &[
        (r#"attributes.kind = "order""#, true, false, false),
        (r#"attributes.kind="order""#, true, false, false),
        (r#"attributes.kind != "order""#, false, true, true),
        (r#"attributes:kind"#, true, true, false),
        (r#"attributes:priority"#, false, true, false),
        (r#"attributes.priority = """#, false, true, false),
        (r#"NOT attributes:kind"#, false, false, true),
        (r#"-attributes:kind"#, false, false, true),
        (r#"hasPrefix(attributes.region, "eu-")"#, true, false, false),
        (r#"hasPrefix(attributes.region, "")"#, true, false, false),
        (r#"hasPrefix( attributes.kind , "re" )"#, false, true, false),
        (r#"attributes."a.b/c" = "x y""#, true, false, false),
        (r#"attributes:"a.b/c""#, true, false, false),
        (
            r#"attributes.kind = "order" AND hasPrefix(attributes.region, "eu")"#,
            true,
            false,
            false,
        ),
        (
            r#"attributes.kind = "order" OR attributes.kind = "refund""#,
            true,
            true,
            false,
        ),
        (
            r#"(attributes.kind = "order" AND attributes:region) OR NOT attributes:kind"#,
            true,
            false,
            true,
        ),
        (
            r#"NOT (attributes.kind = "order" OR attributes.kind = "refund")"#,
            false,
            false,
            true,
        ),
        (r#"NOT NOT attributes:kind"#, true, true, false),
        (r#"attributes.kind = "ORDER""#, false, false, false),
        (r#"attributes.Kind = "order""#, false, false, false),
        (r#"  attributes:kind  "#, true, true, false),
    ];
    for &(text, on_order, on_refund, on_none) in table {
        let filter = parsed(text);
        assert_eq!(filter.matches(&order), on_order, "{text} on order");
        assert_eq!(filter.matches(&refund), on_refund, "{text} on refund");
        assert_eq!(filter.matches(&none), on_none, "{text} on no attributes");
    }
}

#[test]
fn an_empty_filter_is_no_filter() {
    assert_eq!(Filter::parse(""), Ok(None));
    assert_eq!(Filter::parse(" \n\t "), Ok(None));
}

#[test]
fn escapes_in_strings_are_resolved() {
    let filter = parsed(r#"attributes.note = "say \"hi\"\\ \n\t\r""#);
    assert!(filter.matches(&attributes(&[("note", "say \"hi\"\\ \n\t\r")])));
    let filter = parsed(r#"attributes.city = "Zürich""#);
    assert!(filter.matches(&attributes(&[("city", "Zürich")])));
}

#[test]
fn errors_name_the_byte_where_the_filter_goes_wrong() {
    // (filter, position, words the message must contain)
    let table: &[(&str, usize, &str)] = &[
        ("attributes.kind", 15, "expected = or !="),
        (r#"attributes.kind = order"#, 18, "value in double quotes"),
        (r#"attributes.kind == "x""#, 17, "value in double quotes"),
        (r#"attributes.kind = "x"#, 18, "no closing"),
        (r#"attribute.kind = "x""#, 0, "expected attributes.NAME"),
        (r#"attributes kind"#, 10, "expected . or :"),
        (r#"attributes.="x""#, 11, "expected an attribute name"),
        (r#"attributes:"""#, 11, "cannot be empty"),
        (r#"attributes:a AND"#, 16, "found the end of the filter"),
        (r#"attributes:a attributes:b"#, 13, "expected AND, OR"),
        (
            r#"attributes:a AND attributes:b OR attributes:c"#,
            30,
            "needs parentheses",
        ),
        (
            r#"attributes:a OR attributes:b AND attributes:c"#,
            29,
            "needs parentheses",
        ),
        (r#"(attributes:a"#, 13, "close the ( at byte 0"),
        (r#"attributes:a)"#, 12, "expected AND, OR"),
        (r#"hasPrefix(attributes.a "p")"#, 23, "expected ,"),
        (r#"hasPrefix(attributes:a, "p")"#, 20, "expected . after"),
        (r#"hasPrefix(attributes.a, "p""#, 27, "close hasPrefix"),
        (r#"attributes.a = "\x""#, 16, "unknown escape"),
        (r#"and attributes:a"#, 0, "expected attributes.NAME"),
        (r#"attributes:a and attributes:b"#, 13, "expected AND, OR"),
        (r#"NOTattributes:a"#, 0, "expected attributes.NAME"),
        ("attributes:a AND NOT", 20, "found the end"),
    ];
    for &(text, position, words) in table {
        let err = Filter::parse(text).expect_err(text);
        assert_eq!(err.position, position, "{text}: {err}");
        assert!(err.message.contains(words), "{text}: {err}");
        assert!(
            err.to_string().contains(&format!("at byte {position}")),
            "{err}"
        );
    }
}

#[test]
fn a_filter_over_the_limit_is_refused() {
    let name = "a".repeat(MAX_FILTER_BYTES);
    let err = Filter::parse(&format!("attributes:{name}")).expect_err("too long");
    assert!(err.message.contains("at most 1024"), "{err}");
    let fits = format!("attributes:{}", "a".repeat(MAX_FILTER_BYTES - 11));
    assert!(Filter::parse(&fits).is_ok());
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}attributes:a{}", "(".repeat(100), ")".repeat(100));
    let err = Filter::parse(&deep).expect_err("too deep");
    assert!(err.message.contains("nests deeper"), "{err}");
    let nots = format!("{}attributes:a", "NOT ".repeat(200));
    assert!(Filter::parse(&nots).is_err());
    let fine = format!("{}attributes:a{}", "(".repeat(20), ")".repeat(20));
    assert!(Filter::parse(&fine).is_ok());
}

/// Attribute names and values drawn from a small alphabet, so that
/// generated filters and generated messages meet often.
fn small_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ab]{1,2}",
        1 => "[a\"\\\\. \n]{0,3}",
    ]
}

fn name() -> impl Strategy<Value = String> {
    small_text().prop_filter("names are not empty", |name| !name.is_empty())
}

fn filter() -> impl Strategy<Value = Filter> {
    let leaf = prop_oneof![
        (name(), small_text()).prop_map(|(name, value)| Filter::Equals { name, value }),
        name().prop_map(|name| Filter::Has { name }),
        (name(), small_text()).prop_map(|(name, prefix)| Filter::HasPrefix { name, prefix }),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Filter::And),
            prop::collection::vec(inner, 2..4).prop_map(Filter::Or),
        ]
    })
}

fn message() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(name(), small_text(), 0..4)
        .prop_map(|map| map.into_iter().collect())
}

proptest! {
    #[test]
    fn a_printed_filter_parses_back_to_itself(filter in filter()) {
        let text = filter.to_string();
        prop_assert_eq!(Filter::parse(&text), Ok(Some(filter)), "{}", text);
    }

    #[test]
    fn any_text_parses_or_fails_at_a_position_inside_it(text in "\\PC{0,40}") {
        if let Err(err) = Filter::parse(&text) {
            prop_assert!(err.position <= text.len());
        }
    }

    #[test]
    fn text_near_the_grammar_never_panics(
        text in "(attributes|hasPrefix|NOT|AND|OR|[.:,()=!\"\\\\ -]|[ab]){0,24}"
    ) {
        if let Err(err) = Filter::parse(&text) {
            prop_assert!(err.position <= text.len());
        }
    }

    #[test]
    fn not_and_de_morgan_hold(a in filter(), b in filter(), attrs in message()) {
        let not_and = Filter::Not(Box::new(Filter::And(vec![a.clone(), b.clone()])));
        let or_nots = Filter::Or(vec![
            Filter::Not(Box::new(a.clone())),
            Filter::Not(Box::new(b.clone())),
        ]);
        prop_assert_eq!(not_and.matches(&attrs), or_nots.matches(&attrs));
        let either = Filter::Or(vec![a.clone(), Filter::Not(Box::new(a))]);
        prop_assert!(either.matches(&attrs));
    }

    #[test]
    fn equality_and_inequality_are_opposites(
        name in name(),
        value in small_text(),
        attrs in message(),
    ) {
        let equals = Filter::parse(&Filter::Equals { name: name.clone(), value: value.clone() }
            .to_string());
        let text = format!("attributes.{} != {}", Name(&name), Quoted(&value));
        let differs = Filter::parse(&text);
        let (Ok(Some(equals)), Ok(Some(differs))) = (equals, differs) else {
            return Err(TestCaseError::fail(format!("{text} did not parse")));
        };
        prop_assert_ne!(equals.matches(&attrs), differs.matches(&attrs));
    }
}
