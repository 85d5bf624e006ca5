-- Argo CD health of an aifirst.dev Workflow, from status.phase (written by the operator only).
--   Succeeded                                   Healthy
--   Pending, Running, Compensating, no status   Progressing
--   AwaitingApproval                            Suspended (a person must decide an Approval)
--   Failed, Compensated, CompensationFailed     Degraded
-- A spec change the operator has not seen yet (spec.rollback) is Progressing whatever the phase says.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the workflow"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local function condition(wanted)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == wanted then
        return c
      end
    end
  end
  return nil
end

local steps = ""
if status.progress ~= nil then
  steps = " (" .. status.progress .. " steps succeeded)"
end
local phase = status.phase

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Succeeded" .. steps
elseif phase == "Pending" or phase == "Running" or phase == "Compensating" then
  hs.status = "Progressing"
  hs.message = phase .. steps
  if phase == "Compensating" and status.reason ~= nil then
    hs.message = hs.message .. ": undoing the completed steps after " .. status.reason
  end
elseif phase == "AwaitingApproval" then
  hs.status = "Suspended"
  local waiting = condition("AwaitingApproval")
  if waiting ~= nil and waiting.message ~= nil and waiting.message ~= "" then
    hs.message = "Awaiting approval: " .. waiting.message
  else
    hs.message = "Awaiting approval"
  end
elseif phase == "Failed" or phase == "Compensated" or phase == "CompensationFailed" then
  hs.status = "Degraded"
  hs.message = phase
  if status.reason ~= nil and status.reason ~= "" then
    hs.message = hs.message .. " (" .. status.reason .. ")"
  end
  if status.message ~= nil and status.message ~= "" then
    hs.message = hs.message .. ": " .. status.message
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
end
return hs
