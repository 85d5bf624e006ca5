-- Argo CD health of an aifirst.dev Approval (created by the operator for a gated step, owned by its Workflow).
--   Pending (or no status yet)   Suspended: it waits for a person, like the Workflow it gates
--   decided, not yet recorded    Progressing: spec.decision is set and the operator has not recorded it
--   Approved                     Healthy
--   Rejected, Expired            Degraded: the gated step will not run, its workflow compensates
local hs = {}
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
local decision = nil
if obj.spec ~= nil then
  decision = obj.spec.decision
end
local step = ""
if obj.spec ~= nil and obj.spec.workflow ~= nil and obj.spec.step ~= nil then
  step = " on step " .. obj.spec.step .. " of workflow " .. obj.spec.workflow
end

if phase == nil or phase == "" or phase == "Pending" then
  if decision ~= nil and decision ~= "" then
    hs.status = "Progressing"
    hs.message = decision .. "; waiting for the operator to record the decision"
  else
    hs.status = "Suspended"
    hs.message = "Waiting for a decision" .. step
    if obj.spec ~= nil and obj.spec.expiresAt ~= nil then
      hs.message = hs.message .. " (expires " .. obj.spec.expiresAt .. ")"
    end
  end
elseif phase == "Approved" then
  hs.status = "Healthy"
  hs.message = "Approved"
elseif phase == "Rejected" or phase == "Expired" then
  hs.status = "Degraded"
  hs.message = phase
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
end
if (phase == "Approved" or phase == "Rejected") and obj.status.decidedBy ~= nil then
  hs.message = hs.message .. " by " .. obj.status.decidedBy
end
if (phase == "Approved" or phase == "Rejected") and obj.status.reason ~= nil and obj.status.reason ~= "" then
  hs.message = hs.message .. ": " .. obj.status.reason
end
return hs
