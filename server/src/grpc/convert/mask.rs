//! What the update RPCs (`UpdateSubscription`, `UpdateTopic`) share: taking
//! the paths of an `update_mask`, and refusing a path that names a field
//! nobody can change, with a message that says which can.

use crate::broker::BrokerError;

/// The fields of one resource, as an update's mask sees them.
pub(super) struct UpdateFields {
    /// The resource's field in the request, such as `subscription`.
    pub(super) resource: &'static str,
    /// Its message's name, such as `Subscription`.
    pub(super) message: &'static str,
    /// The paths a mask may name, for error messages.
    pub(super) changeable: &'static str,
    /// Fields fixed at creation.
    pub(super) fixed: &'static [&'static str],
    /// What to do instead of changing a fixed field ("" for nothing).
    pub(super) fixed_hint: &'static str,
    /// Fields the broker reports.
    pub(super) reported: &'static [&'static str],
}

impl UpdateFields {
    /// The error of a request without its resource.
    pub(super) fn missing(&self) -> BrokerError {
        let resource = self.resource;
        BrokerError::Invalid(format!(
            "{resource} is missing: set {resource}.name and the new values"
        ))
    }

    /// The mask's paths.
    ///
    /// # Errors
    /// [`BrokerError::Invalid`] when the mask names no field.
    pub(super) fn paths(
        &self,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<Vec<String>, BrokerError> {
        let paths = mask.map(|mask| mask.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(BrokerError::Invalid(format!(
                "update_mask is empty; name the fields to change ({})",
                self.changeable
            )));
        }
        Ok(paths)
    }

    /// The error of a path that names no changeable field: a fixed one, a
    /// reported one, or none at all.
    pub(super) fn refuse(&self, path: &str) -> BrokerError {
        let changeable = self.changeable;
        let why = if self.fixed.contains(&path) {
            format!(
                "which is fixed when the {} is created{}",
                self.resource, self.fixed_hint
            )
        } else if self.reported.contains(&path) {
            "which the broker reports and nobody sets".to_owned()
        } else {
            format!("which is not a field of {}", self.message)
        };
        BrokerError::Invalid(format!(
            "update_mask names {path:?}, {why} (changeable: {changeable})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: UpdateFields = UpdateFields {
        resource: "thing",
        message: "Thing",
        changeable: "a, b",
        fixed: &["name"],
        fixed_hint: "; make a new thing instead",
        reported: &["count"],
    };

    fn message(error: BrokerError) -> String {
        match error {
            BrokerError::Invalid(message) => message,
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    #[test]
    fn each_refused_path_says_why_and_what_can_change() {
        assert_eq!(
            message(FIELDS.refuse("name")),
            "update_mask names \"name\", which is fixed when the thing is created; \
             make a new thing instead (changeable: a, b)"
        );
        assert_eq!(
            message(FIELDS.refuse("count")),
            "update_mask names \"count\", which the broker reports and nobody sets \
             (changeable: a, b)"
        );
        assert_eq!(
            message(FIELDS.refuse("c")),
            "update_mask names \"c\", which is not a field of Thing (changeable: a, b)"
        );
    }

    #[test]
    fn an_empty_or_missing_mask_is_refused() {
        for mask in [None, Some(prost_types::FieldMask::default())] {
            let error = FIELDS.paths(mask).expect_err("no path");
            assert!(message(error).starts_with("update_mask is empty"));
        }
        let paths = FIELDS.paths(Some(prost_types::FieldMask {
            paths: vec!["a".into()],
        }));
        assert_eq!(paths.expect("a path"), ["a"]);
        assert_eq!(
            message(FIELDS.missing()),
            "thing is missing: set thing.name and the new values"
        );
    }
}
