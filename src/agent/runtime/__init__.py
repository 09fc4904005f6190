"""The parts of `micro-agent run` beside its loop (agent.pipeline.Agent): the priority lanes
(lanes), live reconfiguration and the collectors' lifecycle (reconfigure), the drop totals
(drops), the status file (status) and the reported properties (reported)."""
