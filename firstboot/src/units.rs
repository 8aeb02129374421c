//! The systemd units of the agent, as plain files the builder installs into
//! `/etc/systemd/system/`. The agent binary is expected at `/usr/local/bin/imagegen-firstboot`.

/// `(file name, content)` of every unit.
pub const UNITS: &[(&str, &str)] = &[
    (
        "imagegen-seed.service",
        include_str!("../units/imagegen-seed.service"),
    ),
    (
        "imagegen-firstboot.service",
        include_str!("../units/imagegen-firstboot.service"),
    ),
    (
        "imagegen-firstboot-retry.timer",
        include_str!("../units/imagegen-firstboot-retry.timer"),
    ),
    (
        "imagegen-ups-watch.service",
        include_str!("../units/imagegen-ups-watch.service"),
    ),
    (
        "imagegen-backup.service",
        include_str!("../units/imagegen-backup.service"),
    ),
    (
        "imagegen-backup.timer",
        include_str!("../units/imagegen-backup.timer"),
    ),
];

/// `(unit, target)`: the builder enables these by linking
/// `/etc/systemd/system/<target>.wants/<unit>`. The UPS watch and the backup timer are enabled by
/// the agent itself, and only when `node.toml` has `[ups]` / `[backup]`.
pub const ENABLED_BY_BUILDER: &[(&str, &str)] = &[
    ("imagegen-seed.service", "sysinit.target"),
    ("imagegen-firstboot.service", "multi-user.target"),
    ("imagegen-firstboot-retry.timer", "timers.target"),
];

/// Where the builder puts the agent binary (the units' `ExecStart=`).
pub const AGENT_BINARY_PATH: &str = "/usr/local/bin/imagegen-firstboot";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_call_the_installed_binary() {
        for (name, content) in UNITS {
            if name.ends_with(".service") {
                assert!(
                    content.contains(&format!("ExecStart={AGENT_BINARY_PATH} ")),
                    "{name}"
                );
            }
        }
        for (unit, _) in ENABLED_BY_BUILDER {
            assert!(UNITS.iter().any(|(n, _)| n == unit), "{unit}");
        }
    }
}
