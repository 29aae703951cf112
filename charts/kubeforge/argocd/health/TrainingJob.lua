-- Argo CD health check for kubeforge.io/TrainingJob
-- (argocd-cm: resource.customizations.health.kubeforge.io_TrainingJob)
local hs = {}
local function condition(obj, type_)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then return c end
  end
  return nil
end
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubeforge operator to observe the TrainingJob"
  return hs
end
local gen = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if gen ~= nil and observed ~= nil and observed < gen then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(gen)
  return hs
end
local phase = obj.status.phase
local message = obj.status.message
if message == nil or message == "" then message = phase end
if phase == "Succeeded" then
  hs.status = "Healthy"
  local model = obj.status.artifacts and obj.status.artifacts.model
  if model ~= nil and (obj.status.message == nil or obj.status.message == "") then
    message = "Trained: " .. model
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  local c = condition(obj, "Failed")
  if (obj.status.message == nil or obj.status.message == "") and c ~= nil and c.message ~= nil then
    message = c.message
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Pending" or phase == "Queued" or phase == "Running" then
  hs.status = "Progressing"
  local p = obj.status.progress
  if phase == "Running" and p ~= nil and p.epoch ~= nil and (obj.status.message == nil or obj.status.message == "") then
    message = "Running: epoch " .. tostring(p.epoch)
  end
else
  hs.status = "Unknown"
  message = "Unknown phase " .. tostring(phase)
end
hs.message = message
return hs
