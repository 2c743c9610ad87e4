//! Finding and opening a Vulkan device.

use std::sync::{Arc, OnceLock};

use vulkano::device::physical::{PhysicalDevice, PhysicalDeviceType};
use vulkano::device::{Device, DeviceCreateInfo, DeviceExtensions, Queue, QueueCreateInfo, QueueFlags};
use vulkano::instance::{Instance, InstanceCreateFlags, InstanceCreateInfo};
use vulkano::memory::MemoryHeapFlags;
use vulkano::VulkanLibrary;

use crate::nn::GpuInfo;

/// An open device with its compute queue.
pub(crate) struct Gpu {
    pub(crate) queue: Arc<Queue>,
    pub(crate) info: GpuInfo,
    /// The largest storage buffer a shader may address
    /// (`maxStorageBufferRange`): vulkano does not check it.
    pub(crate) max_buffer: u64,
    pub(crate) kernels: super::exec::Kernels,
}

impl Gpu {
    pub(crate) fn info(&self) -> &GpuInfo {
        &self.info
    }
}

/// vulkano's top-level error text hides the cause: walk the chain.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn rank(t: PhysicalDeviceType) -> Option<u8> {
    match t {
        PhysicalDeviceType::DiscreteGpu => Some(0),
        PhysicalDeviceType::IntegratedGpu => Some(1),
        PhysicalDeviceType::VirtualGpu => Some(2),
        PhysicalDeviceType::Cpu => Some(3),
        _ => None,
    }
}

fn is_software(t: PhysicalDeviceType) -> bool {
    matches!(t, PhysicalDeviceType::Cpu)
}

/// The chosen physical device, its compute queue family and its info.
fn choose(allow_software: bool) -> Result<(Arc<PhysicalDevice>, u32, GpuInfo), String> {
    let library = VulkanLibrary::new().map_err(|e| {
        format!("no Vulkan loader ({}): install libvulkan1 and a driver (mesa-vulkan-drivers)", chain(&e))
    })?;
    let instance = Instance::new(
        library,
        InstanceCreateInfo { flags: InstanceCreateFlags::ENUMERATE_PORTABILITY, ..Default::default() },
    )
    .map_err(|e| format!("cannot start Vulkan ({}): install a Vulkan driver (mesa-vulkan-drivers)", chain(&e)))?;
    let devices =
        instance.enumerate_physical_devices().map_err(|e| format!("cannot list Vulkan devices: {}", chain(&e)))?;
    let mut best: Option<(u8, Arc<PhysicalDevice>, u32)> = None;
    let mut skipped = Vec::new();
    for pd in devices {
        let props = pd.properties();
        let Some(r) = rank(props.device_type) else { continue };
        if is_software(props.device_type) && !allow_software {
            skipped.push(props.device_name.clone());
            continue;
        }
        let Some(q) = pd.queue_family_properties().iter().position(|q| q.queue_flags.intersects(QueueFlags::COMPUTE))
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _, _)| r < *b) {
            best = Some((r, pd.clone(), q as u32));
        }
    }
    let Some((_, pd, q)) = best else {
        return Err(if skipped.is_empty() {
            "no Vulkan device with compute queues".to_string()
        } else {
            format!(
                "only software Vulkan devices ({}), which this node does not allow (allow them with --allow-software-gpu)",
                skipped.join(", ")
            )
        });
    };
    let props = pd.properties();
    let memory_bytes = pd
        .memory_properties()
        .memory_heaps
        .iter()
        .filter(|h| h.flags.intersects(MemoryHeapFlags::DEVICE_LOCAL))
        .map(|h| h.size)
        .max()
        .unwrap_or(0);
    let driver = match (&props.driver_name, &props.driver_info) {
        (Some(n), Some(i)) if !i.is_empty() => format!("{n}: {i}"),
        (Some(n), _) => format!("{n} {:#x}", props.driver_version),
        _ => format!("driver {:#x}", props.driver_version),
    };
    let info = GpuInfo {
        name: props.device_name.clone(),
        memory_bytes,
        software: is_software(props.device_type),
        driver,
        exact_refused: exact_refused(&pd),
    };
    Ok((pd, q, info))
}

/// Why the device cannot run the exact kernels, or `None`. They declare
/// `SignedZeroInfNanPreserve`: without it a driver may assume no NaNs,
/// infinities or signed zeros and fold `x * 0` to 0. Denormals need no
/// property: the kernels flush them themselves (exact.wgsl).
fn exact_refused(pd: &PhysicalDevice) -> Option<String> {
    let float_controls =
        pd.api_version() >= vulkano::Version::V1_2 || pd.supported_extensions().khr_shader_float_controls;
    if !float_controls {
        return Some("the device lacks VK_KHR_shader_float_controls (Vulkan 1.2)".into());
    }
    if pd.properties().shader_signed_zero_inf_nan_preserve_float32 != Some(true) {
        return Some("the device does not report shaderSignedZeroInfNanPreserveFloat32".into());
    }
    None
}

/// The GPU this node would use (see [`crate::nn::probe_gpu`]).
pub(crate) fn probe(allow_software: bool) -> Result<crate::nn::GpuInfo, String> {
    choose(allow_software).map(|(_, _, info)| info)
}

fn open(allow_software: bool) -> Result<Arc<Gpu>, String> {
    let (pd, queue_family_index, info) = choose(allow_software)?;
    let max_buffer = pd.properties().max_storage_buffer_range as u64;
    let float_controls_ext = info.exact_refused.is_none() && pd.api_version() < vulkano::Version::V1_2;
    let (device, mut queues) = Device::new(
        pd,
        DeviceCreateInfo {
            queue_create_infos: vec![QueueCreateInfo { queue_family_index, ..Default::default() }],
            enabled_extensions: DeviceExtensions {
                khr_shader_float_controls: float_controls_ext,
                ..DeviceExtensions::empty()
            },
            ..Default::default()
        },
    )
    .map_err(|e| format!("cannot open the Vulkan device {}: {}", info.name, chain(&e)))?;
    let queue = queues.next().ok_or_else(|| format!("the Vulkan device {} gave no queue", info.name))?;
    let kernels = super::exec::Kernels::new(&device, info.exact_refused.clone())?;
    Ok(Arc::new(Gpu { queue, info, max_buffer, kernels }))
}

/// The executor's GPU, opened on first use (a node that never runs a GPU
/// job never touches Vulkan). The outcome, device or reason, is kept.
pub(crate) struct Lazy {
    allow_software: bool,
    cell: OnceLock<Result<Arc<Gpu>, String>>,
}

impl Lazy {
    pub(crate) fn new(allow_software: bool) -> Self {
        Lazy { allow_software, cell: OnceLock::new() }
    }

    pub(crate) fn get(&self) -> Result<Arc<Gpu>, String> {
        self.cell
            .get_or_init(|| open(self.allow_software))
            .clone()
            .map_err(|e| format!("this node has no usable GPU: {e}"))
    }
}
