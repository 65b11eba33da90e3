"""What runs stages together: the CLI's stage commands, the flywheel, the streamed round."""
