//! Running plans on the device: the compiled kernels, the arena buffer,
//! uploads, dispatches and read-back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vulkano::buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferUsage, CopyBufferInfo, PrimaryCommandBufferAbstract,
};
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator};
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::PipelineDescriptorSetLayoutCreateInfo;
use vulkano::pipeline::{ComputePipeline, Pipeline, PipelineBindPoint, PipelineLayout, PipelineShaderStageCreateInfo};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo};
use vulkano::sync::GpuFuture;

use super::device::{chain, Gpu};
use crate::nn::graph::{Kernel, Plan};
use crate::nn::NnError;

mod spirv {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Largest workgroup count per dimension every Vulkan device supports.
const MAX_GROUPS_X: u32 = 65535;
/// `@workgroup_size` of every kernel.
const WORKGROUP: u32 = 64;

fn vk(what: &str) -> impl Fn(&dyn std::error::Error) -> NnError + '_ {
    move |e| NnError::Runtime(format!("{what}: {}", chain(e)))
}

type Pipelines = HashMap<Kernel, Arc<ComputePipeline>>;

/// The compiled kernels and allocators of one device.
pub(crate) struct Kernels {
    layout: Arc<PipelineLayout>,
    fast: Pipelines,
    /// The exact kernels, or why this device cannot run them.
    exact: Result<Pipelines, String>,
    memory: Arc<StandardMemoryAllocator>,
    commands: Arc<StandardCommandBufferAllocator>,
    sets: Arc<StandardDescriptorSetAllocator>,
}

impl Kernels {
    /// Creates every pipeline (the driver compiles them here, once): the
    /// fast kernels, and the exact ones unless `exact_refused` says why the
    /// device cannot run them.
    pub(crate) fn new(device: &Arc<vulkano::device::Device>, exact_refused: Option<String>) -> Result<Kernels, String> {
        let fast = stages(device, spirv::FAST, "fast")?;
        // One layout for every kernel: they all bind the arena at 0 and
        // take the same push constants, so one descriptor set serves all.
        let layout_info = PipelineDescriptorSetLayoutCreateInfo::from_stages(fast.iter().map(|(_, s)| s))
            .into_pipeline_layout_create_info(device.clone())
            .map_err(|e| format!("cannot lay out the GPU kernels: {e:?}"))?;
        let layout = PipelineLayout::new(device.clone(), layout_info)
            .map_err(|e| format!("cannot create the pipeline layout: {}", chain(&e)))?;
        let fast = pipelines(device, &layout, fast)?;
        let exact = match exact_refused {
            Some(why) => Err(why),
            None => pipelines(device, &layout, stages(device, spirv::EXACT, "exact")?),
        };
        Ok(Kernels {
            layout,
            fast,
            exact,
            memory: Arc::new(StandardMemoryAllocator::new_default(device.clone())),
            commands: Arc::new(StandardCommandBufferAllocator::new(device.clone(), Default::default())),
            sets: Arc::new(StandardDescriptorSetAllocator::new(device.clone(), Default::default())),
        })
    }

    /// Why this device cannot run exact inference, or `None`.
    pub(crate) fn exact_refused(&self) -> Option<&str> {
        self.exact.as_ref().err().map(|s| s.as_str())
    }
}

fn stages(
    device: &Arc<vulkano::device::Device>,
    words: &[u32],
    which: &str,
) -> Result<Vec<(Kernel, PipelineShaderStageCreateInfo)>, String> {
    // SAFETY: the words are naga's output for kernels.wgsl, validated by
    // naga at build time (the exact ones then decorated by build.rs).
    let module = unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(words)) }
        .map_err(|e| format!("cannot load the {which} GPU kernels: {}", chain(&e)))?;
    let mut stages = Vec::new();
    for k in Kernel::ALL {
        let entry = module
            .entry_point(k.entry())
            .ok_or_else(|| format!("the {which} GPU kernels lack entry point {}", k.entry()))?;
        stages.push((k, PipelineShaderStageCreateInfo::new(entry)));
    }
    Ok(stages)
}

fn pipelines(
    device: &Arc<vulkano::device::Device>,
    layout: &Arc<PipelineLayout>,
    stages: Vec<(Kernel, PipelineShaderStageCreateInfo)>,
) -> Result<Pipelines, String> {
    let mut pipelines = HashMap::new();
    for (k, stage) in stages {
        let p =
            ComputePipeline::new(device.clone(), None, ComputePipelineCreateInfo::stage_layout(stage, layout.clone()))
                .map_err(|e| format!("cannot create the {} kernel: {}", k.entry(), chain(&e)))?;
        pipelines.insert(k, p);
    }
    Ok(pipelines)
}

/// A plan with its arena on the device, weights uploaded.
pub(crate) struct Loaded {
    pub(crate) plan: Plan,
    arena: Subbuffer<[f32]>,
    set: Arc<DescriptorSet>,
}

fn host_buffer(
    k: &Kernels,
    usage: BufferUsage,
    data: impl ExactSizeIterator<Item = f32>,
) -> Result<Subbuffer<[f32]>, NnError> {
    Buffer::from_iter(
        k.memory.clone(),
        BufferCreateInfo { usage, ..Default::default() },
        AllocationCreateInfo {
            memory_type_filter: MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE,
            ..Default::default()
        },
        data,
    )
    .map_err(|e| vk("cannot allocate a staging buffer")(&e))
}

fn submit(
    gpu: &Gpu,
    builder: AutoCommandBufferBuilder<vulkano::command_buffer::PrimaryAutoCommandBuffer>,
    timeout: Duration,
) -> Result<(), NnError> {
    let cb = builder.build().map_err(|e| vk("cannot record GPU commands")(&e))?;
    let future = cb
        .execute(gpu.queue.clone())
        .map_err(|e| vk("cannot submit GPU commands")(&e))?
        .then_signal_fence_and_flush()
        .map_err(|e| vk("cannot submit GPU commands")(&e))?;
    future.wait(Some(timeout)).map_err(|e| match e {
        vulkano::Validated::Error(vulkano::VulkanError::Timeout) => {
            NnError::Runtime("inference on the GPU ran past the job's time limit".into())
        }
        e => vk("GPU execution failed")(&e),
    })
}

fn builder(
    gpu: &Gpu,
    k: &Kernels,
) -> Result<AutoCommandBufferBuilder<vulkano::command_buffer::PrimaryAutoCommandBuffer>, NnError> {
    AutoCommandBufferBuilder::primary(
        k.commands.clone(),
        gpu.queue.queue_family_index(),
        CommandBufferUsage::OneTimeSubmit,
    )
    .map_err(|e| vk("cannot record GPU commands")(&e))
}

/// Allocates the arena for `plan` and uploads its weights.
pub(crate) fn load(gpu: &Gpu, k: &Kernels, plan: Plan, timeout: Duration) -> Result<Loaded, NnError> {
    let arena = Buffer::new_slice::<f32>(
        k.memory.clone(),
        BufferCreateInfo {
            usage: BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST,
            ..Default::default()
        },
        AllocationCreateInfo { memory_type_filter: MemoryTypeFilter::PREFER_DEVICE, ..Default::default() },
        plan.arena as u64,
    )
    .map_err(|e| vk("cannot allocate GPU memory")(&e))?;
    if !plan.weights.is_empty() {
        let all: usize = plan.weights.iter().map(|(_, w)| w.len()).sum();
        let staging = host_buffer(
            k,
            BufferUsage::TRANSFER_SRC,
            plan.weights.iter().flat_map(|(_, w)| w.iter().copied()).collect::<Vec<_>>().into_iter(),
        )?;
        let mut b = builder(gpu, k)?;
        let mut at = 0u64;
        for (off, w) in &plan.weights {
            let len = w.len() as u64;
            if len == 0 {
                continue;
            }
            let src = staging.clone().slice(at..at + len);
            let dst = arena.clone().slice(*off as u64..*off as u64 + len);
            b.copy_buffer(CopyBufferInfo::buffers(src, dst)).map_err(|e| vk("cannot upload weights")(&e))?;
            at += len;
        }
        debug_assert_eq!(at as usize, all);
        submit(gpu, b, timeout)?;
    }
    let set = DescriptorSet::new(
        k.sets.clone(),
        k.layout
            .set_layouts()
            .first()
            .cloned()
            .ok_or_else(|| NnError::Runtime("the GPU kernels declare no descriptor set".into()))?,
        [WriteDescriptorSet::buffer(0, arena.clone())],
        [],
    )
    .map_err(|e| vk("cannot bind GPU memory")(&e))?;
    Ok(Loaded { plan, arena, set })
}

/// Uploads `inputs`, runs every step in order and reads the outputs back.
pub(crate) fn run(
    gpu: &Gpu,
    k: &Kernels,
    l: &Loaded,
    inputs: &[&[f32]],
    timeout: Duration,
) -> Result<Vec<Vec<f32>>, NnError> {
    let total_in: usize = inputs.iter().map(|i| i.len()).sum();
    let staging = host_buffer(
        k,
        BufferUsage::TRANSFER_SRC,
        inputs
            .iter()
            .flat_map(|i| i.iter().map(|v| if l.plan.exact { crate::nn::exact::math::canonical(*v) } else { *v }))
            .collect::<Vec<_>>()
            .into_iter(),
    )?;
    let total_out: usize = l.plan.outputs.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let download = Buffer::new_slice::<f32>(
        k.memory.clone(),
        BufferCreateInfo { usage: BufferUsage::TRANSFER_DST, ..Default::default() },
        AllocationCreateInfo {
            memory_type_filter: MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS,
            ..Default::default()
        },
        total_out.max(1) as u64,
    )
    .map_err(|e| vk("cannot allocate a read-back buffer")(&e))?;

    let mut b = builder(gpu, k)?;
    let mut at = 0u64;
    for ((off, len), data) in l.plan.inputs.iter().zip(inputs) {
        debug_assert_eq!(*len, data.len());
        let len = *len as u64;
        if len > 0 {
            let src = staging.clone().slice(at..at + len);
            let dst = l.arena.clone().slice(*off as u64..*off as u64 + len);
            b.copy_buffer(CopyBufferInfo::buffers(src, dst)).map_err(|e| vk("cannot upload inputs")(&e))?;
        }
        at += len;
    }
    debug_assert_eq!(at as usize, total_in);
    let pipelines = if l.plan.exact {
        k.exact.as_ref().map_err(|why| NnError::Unsupported(format!("this GPU cannot run exact inference: {why}")))?
    } else {
        &k.fast
    };
    b.bind_descriptor_sets(PipelineBindPoint::Compute, k.layout.clone(), 0, l.set.clone())
        .map_err(|e| vk("cannot bind GPU memory")(&e))?;
    for step in &l.plan.steps {
        let pipeline = pipelines.get(&step.kernel).ok_or_else(|| NnError::Runtime("missing kernel".into()))?;
        let groups = step.n.div_ceil(WORKGROUP);
        let [gx, gy, gz] = step.grid.unwrap_or([groups.min(MAX_GROUPS_X), groups.div_ceil(MAX_GROUPS_X), 1]);
        b.bind_pipeline_compute(pipeline.clone()).map_err(|e| vk("cannot bind a kernel")(&e))?;
        b.push_constants(pipeline.layout().clone(), 0, step.params)
            .map_err(|e| vk("cannot set kernel parameters")(&e))?;
        // SAFETY: the planner sized every offset the step's parameters name
        // inside the arena, and the shaders clamp storage accesses to it.
        unsafe { b.dispatch([gx, gy, gz]) }.map_err(|e| vk("cannot dispatch a kernel")(&e))?;
    }
    let mut at = 0u64;
    for (off, shape) in &l.plan.outputs {
        let len = shape.iter().product::<usize>() as u64;
        if len > 0 {
            let src = l.arena.clone().slice(*off as u64..*off as u64 + len);
            let dst = download.clone().slice(at..at + len);
            b.copy_buffer(CopyBufferInfo::buffers(src, dst)).map_err(|e| vk("cannot read outputs")(&e))?;
        }
        at += len;
    }
    submit(gpu, b, timeout)?;
    let data = download.read().map_err(|e| NnError::Runtime(format!("cannot read outputs: {e}")))?;
    let mut outs = Vec::new();
    let mut at = 0usize;
    for (_, shape) in &l.plan.outputs {
        let len: usize = shape.iter().product();
        outs.push(data[at..at + len].to_vec());
        at += len;
    }
    Ok(outs)
}
