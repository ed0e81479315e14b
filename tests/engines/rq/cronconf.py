"""The `rq cron` config of the schedule tests (read by a real `rq cron` process)."""

from rq import cron

from tests.engines.rq import jobs

cron.register(jobs.add, queue_name="default", args=(20, 22), interval=3600, name="answer")
