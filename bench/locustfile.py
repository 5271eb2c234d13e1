"""Locust users for the overload sweep: each posts 100 bytes as fast as it is
answered. A 429 is counted as a failure named after its status, which is how the
sweep tells shed requests from served ones."""

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

BODY = "x" * 100


class Caller(FastHttpUser):
    wait_time = constant(0)

    @task
    def call(self) -> None:
        self.client.post("/", data=BODY, headers={"Content-Type": "text/plain"})
