-- Argo CD health check for kubeforge.io/TuningStudy
-- (argocd-cm: resource.customizations.health.kubeforge.io_TuningStudy)
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubeforge operator to observe the TuningStudy"
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
if message == nil or message == "" then
  message = phase
  if obj.status.progress ~= nil and obj.status.progress ~= "" then
    message = phase .. ": " .. obj.status.progress .. " trials"
  end
end
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  message = "Unknown phase " .. tostring(phase)
end
hs.message = message
return hs
