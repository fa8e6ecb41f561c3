"""The blue/green cut-over rule (shared/handover.py), against a simulation of two deployments that read the
control log late, process at their own pace and hand users back and forth: every input offset is published
for users exactly once, and a replay of the final control log names the deployment that published it."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.handover import CutoverIndex, HandoverStep, first_at, lowest_at, owner_at, rewind_point

OFFSETS = 60
TOPIC = "rides"


@dataclass
class Deployment:
    name: str
    epoch: int = 1
    position: int = 0
    # its switch records (epoch, offset), in the order written, visible to everyone at once
    switches: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Fleet:
    epoch: int = 1
    handovers: list[HandoverStep] = field(default_factory=list)
    published: dict[int, list[str]] = field(default_factory=dict)
    deployments: dict[str, Deployment] = field(
        default_factory=lambda: {"blue": Deployment("blue"), "green": Deployment("green")}
    )

    def owner(self) -> str:
        return self.handovers[-1].to if self.handovers else "blue"

    def cutover(self, epoch: int, deployment: str, _topic: str, _partition: int) -> int | None:
        return first_at(self.deployments[deployment].switches, epoch)

    def hand_over(self) -> None:
        self.epoch += 1
        self.handovers.append(HandoverStep(self.epoch, "green" if self.owner() == "blue" else "blue"))

    def bump(self) -> None:  # an epoch that changes nothing about who is live (a canary step, say)
        self.epoch += 1

    def process(self, name: str, count: int) -> bool:
        """Like the runner: record the switch at its position, consume again from a cut-over read past, then
        score until a record's owner is unknown. True when anything changed."""
        deployment = self.deployments[name]
        first = deployment.position
        # the runner writes its switch record at its position before it consumes (record_positions_once)
        recorded = [o for e, o in deployment.switches if e == deployment.epoch]
        wrote = not recorded or first < min(recorded)
        if wrote:
            deployment.switches.append((deployment.epoch, first))
        known = [h for h in self.handovers if h.epoch <= deployment.epoch]

        def cutover(epoch: int, who: str, topic: str, partition: int) -> int | None:
            found = self.cutover(epoch, who, topic, partition)
            return first if found is None and who == name else found

        again = rewind_point(
            known, "blue", name, cutover, lambda e: lowest_at(deployment.switches, e), TOPIC, 0, first
        )
        if again is not None:  # (also when idle: the runner checks its positions between consumes)
            deployment.position = again
            return True
        if first >= OFFSETS:
            return wrote
        moved = False
        for offset in range(first, min(OFFSETS, first + count)):
            owner = owner_at(known, "blue", cutover, TOPIC, 0, offset)
            if owner is None:
                break
            if owner == name:
                self.published.setdefault(offset, []).append(name)
            deployment.position, moved = offset + 1, True
        return moved


actions = st.lists(
    st.one_of(
        st.tuples(st.just("handover")),
        st.tuples(st.just("bump")),
        st.tuples(st.just("learn"), st.sampled_from(["blue", "green"])),
        st.tuples(st.just("process"), st.sampled_from(["blue", "green"]), st.integers(1, 15)),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(actions)
def test_every_offset_is_published_once_by_the_owner_a_replay_names(steps: list[tuple[object, ...]]) -> None:
    fleet = Fleet()
    for step in steps:
        if step[0] == "handover":
            fleet.hand_over()
        elif step[0] == "bump":
            fleet.bump()
        elif step[0] == "learn":
            fleet.deployments[str(step[1])].epoch = fleet.epoch
        else:
            fleet.process(str(step[1]), int(str(step[2])))
    # Then both catch up with the log and the input: nobody waits forever on the other.
    for deployment in fleet.deployments.values():
        deployment.epoch = fleet.epoch
    while fleet.process("blue", OFFSETS) | fleet.process("green", OFFSETS):
        pass
    assert all(d.position == OFFSETS for d in fleet.deployments.values()), "a deployment is stuck"
    assert {o: len(who) for o, who in fleet.published.items()} == dict.fromkeys(range(OFFSETS), 1)
    for offset, (who,) in fleet.published.items():
        assert owner_at(fleet.handovers, "blue", fleet.cutover, TOPIC, 0, offset) == who


def test_a_partition_waits_only_for_the_cutover_it_needs() -> None:
    handovers = [HandoverStep(2, "green")]
    index = CutoverIndex("tip")
    assert owner_at(handovers, "blue", index.cutover, TOPIC, 0, 5) is None
    switch = b'{"service":"tip","topic":"rides","partition":0,"offset":7,"epoch":3,"instance":"a"}'
    index.add("switch/tip/0/3@7", switch)  # blue first scored at epoch 3 (it never saw epoch 2 alone)
    index.add("switch/cost/0/2@1", switch.replace(b'"tip"', b'"cost"'))  # another service's: ignored
    assert [owner_at(handovers, "blue", index.cutover, TOPIC, 0, o) for o in (6, 7)] == ["blue", "green"]
    assert owner_at(handovers, "blue", index.cutover, TOPIC, 1, 7) is None
    assert owner_at([HandoverStep(2, "blue")], "blue", index.cutover, TOPIC, 1, 7) == "blue"
