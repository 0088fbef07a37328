"""Rate control: the pacer, its learner, the user's token buckets, retry delays."""
