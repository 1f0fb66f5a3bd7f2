//! ECS's CPU and memory strings: `"1024"` or `"1 vCPU"`, `"512"` or `"1 GB"`.

/// CPU units in one vCPU.
pub const CPU_UNITS_PER_VCPU: u32 = 1024;
/// MiB in one GB, as ECS counts them.
pub const MIB_PER_GB: u32 = 1024;

/// Parses a task-level `cpu`: CPU units (`"256"`) or vCPUs (`"0.25 vCPU"`, `"1vCPU"`).
pub fn parse_cpu_units(text: &str) -> Result<u32, String> {
    parse_scaled(text, "vcpu", CPU_UNITS_PER_VCPU).ok_or_else(|| {
        format!(
            "{text:?} is not a CPU amount; write CPU units like \"256\" or vCPUs like \"0.25 vCPU\""
        )
    })
}

/// Parses a task-level `memory`: MiB (`"512"`) or GB (`"1 GB"`, `"0.5GB"`).
pub fn parse_memory_mib(text: &str) -> Result<u32, String> {
    parse_scaled(text, "gb", MIB_PER_GB).ok_or_else(|| {
        format!("{text:?} is not a memory amount; write MiB like \"512\" or GB like \"1 GB\"")
    })
}

/// `N` as is, or `X <unit>` times `scale`, which must come out whole.
fn parse_scaled(text: &str, unit: &str, scale: u32) -> Option<u32> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    if let Some(number) = lower.strip_suffix(unit) {
        let number = number.trim_end();
        if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let scaled = value * f64::from(scale);
        if scaled.fract() != 0.0 || scaled <= 0.0 || scaled > f64::from(u32::MAX) {
            return None;
        }
        // Checked above: a whole, positive number that fits.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return Some(scaled as u32);
    }
    if trimmed.is_empty() || !trimmed.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    trimmed.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_accepts_units_and_vcpus() {
        assert_eq!(parse_cpu_units("256"), Ok(256));
        assert_eq!(parse_cpu_units("1 vCPU"), Ok(1024));
        assert_eq!(parse_cpu_units("0.5 vCPU"), Ok(512));
        assert_eq!(parse_cpu_units("2vcpu"), Ok(2048));
        assert!(parse_cpu_units("0.0001 vCPU").is_err());
        assert!(parse_cpu_units("one").is_err());
        assert!(parse_cpu_units("-1").is_err());
        assert!(parse_cpu_units("").is_err());
    }

    #[test]
    fn memory_accepts_mib_and_gb() {
        assert_eq!(parse_memory_mib("512"), Ok(512));
        assert_eq!(parse_memory_mib("1 GB"), Ok(1024));
        assert_eq!(parse_memory_mib("0.5GB"), Ok(512));
        assert!(parse_memory_mib("1 TB").is_err());
        assert!(parse_memory_mib("1.5").is_err());
    }
}
