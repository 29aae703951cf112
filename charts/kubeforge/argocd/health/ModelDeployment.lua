-- Argo CD health check for kubeforge.io/ModelDeployment
-- (argocd-cm: resource.customizations.health.kubeforge.io_ModelDeployment)
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubeforge operator to observe the ModelDeployment"
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
  local r = obj.status.replicas
  if r ~= nil and r.desired ~= nil then
    message = phase .. ": " .. tostring(r.ready or 0) .. "/" .. tostring(r.desired) .. " replicas ready"
  end
end
local rollout = obj.status.rollout
if phase == "Progressing" and rollout ~= nil and rollout.phase == "Paused" then
  -- a canary rollout held (spec.rollout.paused, or a breach with autoRollback off): as Argo
  -- Rollouts reports a paused rollout
  hs.status = "Suspended"
elseif phase == "Ready" then
  hs.status = "Healthy"
elseif phase == "Degraded" or phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Pending" or phase == "Loading" or phase == "Progressing" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  message = "Unknown phase " .. tostring(phase)
end
hs.message = message
return hs
