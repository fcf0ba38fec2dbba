-- Argo CD health check for optimodel.dev/OptimizedModel (argocd-cm key
-- resource.customizations.health.optimodel.dev_OptimizedModel). Reads only what the operator
-- writes: status.phase, status.observedGeneration, status.conditions, status.message.
--   Ready (and its Ready condition not False)     -> Healthy
--   Pending / Building / Deploying, no status yet,
--   or a spec generation not yet observed          -> Progressing
--   Failed (the build of the current spec failed),
--   or phase Ready while the Ready condition is False -> Degraded, with the reason
--   an unknown phase                                -> Unknown
local hs = {}

if obj == nil then
  hs.status = "Missing"
  hs.message = "OptimizedModel not found"
  return hs
end

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the optimodel operator to reconcile"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d", generation)
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local built = condition(status, "Built")

if phase == "Failed" then
  hs.status = "Degraded"
  if status.message ~= nil and status.message ~= "" then
    hs.message = status.message
  else
    hs.message = describe(built, "Build failed")
  end
  return hs
end

if phase == "Ready" then
  if ready ~= nil and ready.status == "False" then
    hs.status = "Degraded"
    hs.message = describe(ready, "Serving is not ready")
    return hs
  end
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if phase == "Building" then
  hs.status = "Progressing"
  hs.message = describe(built, "Building the engine")
  return hs
end

if phase == "Deploying" then
  hs.status = "Progressing"
  hs.message = describe(ready, "Deploying Triton")
  return hs
end

if phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Pending"
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
