"""Model-card templates rendered when a checkpoint is published (see trainers.hub.push)."""
