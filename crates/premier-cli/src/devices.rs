//! `--devices`: the devices of a data-parallel run, one peer each.

use burn::tensor::backend::{Backend, Device as _, DeviceId};

use crate::BackendKind;

/// The devices `--devices` names: `cpu:N` (N peers on the CPU) or `cuda:0,cuda:1,…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList {
    /// The backend they belong to.
    pub backend: BackendKind,
    /// Device indices, one per peer (the CPU's `N` peers all use device 0).
    pub indices: Vec<usize>,
}

impl DeviceList {
    /// The devices of backend `B`, after checking they are the backend that runs: `B::Device`s
    /// of the same kind as `like`, with the listed indices.
    pub fn devices<B: Backend>(
        &self,
        running: BackendKind,
        like: &B::Device,
    ) -> anyhow::Result<Vec<B::Device>> {
        if self.backend != running {
            anyhow::bail!(
                "--devices names {:?} devices but --backend is {:?}: pass --backend {}",
                self.backend,
                running,
                format!("{:?}", self.backend).to_lowercase()
            );
        }
        let kind = like.to_id().type_id;
        self.indices
            .iter()
            .map(|&i| {
                let index_id = u16::try_from(i)
                    .map_err(|_| anyhow::anyhow!("--devices: device index {i} is too large"))?;
                Ok(B::Device::from_id(DeviceId {
                    type_id: kind,
                    index_id,
                }))
            })
            .collect()
    }
}

/// A clap value parser for `--devices`.
pub(crate) fn parse_devices(text: &str) -> Result<DeviceList, String> {
    let usage = "give cpu:N (N peers on the CPU) or cuda:0,cuda:1,… (one peer per GPU)";
    if let Some(count) = text.strip_prefix("cpu:") {
        return match count.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(DeviceList {
                backend: BackendKind::Flex,
                indices: vec![0; n],
            }),
            _ => Err(format!("{text:?}: cpu:N takes 1 to 64 peers; {usage}")),
        };
    }
    let mut indices = Vec::new();
    for part in text.split(',') {
        let index = part
            .trim()
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| format!("{part:?} in {text:?} is not a device: {usage}"))?;
        if indices.contains(&index) {
            return Err(format!("cuda:{index} is listed twice in {text:?}"));
        }
        indices.push(index);
    }
    Ok(DeviceList {
        backend: BackendKind::Cuda,
        indices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_devices("cpu:3").unwrap(),
            DeviceList {
                backend: BackendKind::Flex,
                indices: vec![0, 0, 0]
            }
        );
        assert_eq!(parse_devices("cuda:0,cuda:2").unwrap().indices, vec![0, 2]);
        for bad in ["cpu:0", "cpu:x", "gpu:1", "cuda:0,cuda:0", "cuda:", ""] {
            assert!(parse_devices(bad).is_err(), "{bad}");
        }
        let list = parse_devices("cuda:0").unwrap();
        let err = list
            .devices::<burn::backend::Flex>(BackendKind::Flex, &Default::default())
            .unwrap_err();
        assert!(err.to_string().contains("--backend cuda"), "{err}");
    }
}
