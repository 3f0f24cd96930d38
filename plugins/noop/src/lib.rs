//! Does nothing and returns its input: the benchmarks' job, which measures
//! what TaskFlow itself costs per job.

use taskflow_sdk::{Bytes, TaskError, task};

#[task]
fn noop(input: Bytes) -> Result<Bytes, TaskError> {
    Ok(input)
}

#[cfg(test)]
mod tests {
    #[test]
    fn returns_its_input() {
        let input = taskflow_sdk::Bytes(b"same".to_vec());
        assert_eq!(super::noop(input.clone()).unwrap(), input);
    }
}
