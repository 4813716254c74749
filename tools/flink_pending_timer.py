"""Beam's Flink runner never finishes a streaming job whose stateful DoFn leaves a
processing-time timer set at end of input — the minimal reproduction (README, Flink).

    python tools/flink_cluster.py start
    python tools/flink_pending_timer.py --clear $(python tools/flink_cluster.py args) --streaming   # ends, ~15 s
    python tools/flink_pending_timer.py $(python tools/flink_cluster.py args) --streaming           # never ends

Without ``--clear`` both tasks of the stateful stage spin in
``ExecutableStageDoFnOperator.flushData`` (a core each, seen with ``jstack``): it waits for the
output watermark, which the pending timer holds at its element's timestamp, and drains
processing-time timers only for splittable DoFns. Cancel the job (it stays CANCELLING: the spin
does not look at it), then kill the TaskManager (``python tools/flink_cluster.py
kill-taskmanager 0``) and, once the job is CANCELED, start it again (``start-taskmanager 0``);
killed first, the restart strategy re-runs the job into the same spin.
"""

from __future__ import annotations

import argparse
import time

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp


class Buffer(beam.DoFn):
    """A bag flushed at the window end, with an idle timer the flush may or may not clear."""

    BAG = BagStateSpec("bag", VarIntCoder())
    END = TimerSpec("end", TimeDomain.WATERMARK)
    IDLE = TimerSpec("idle", TimeDomain.REAL_TIME)

    def __init__(self, clear: bool) -> None:
        self.clear = clear

    def process(self, element, window=beam.DoFn.WindowParam, bag=beam.DoFn.StateParam(BAG),
                end=beam.DoFn.TimerParam(END), idle=beam.DoFn.TimerParam(IDLE)):
        bag.add(element[1])
        end.set(Timestamp(micros=(window.end.micros // 1000) * 1000))
        idle.set(time.time() + 600)

    @on_timer(END)
    def flush(self, key=beam.DoFn.KeyParam, bag=beam.DoFn.StateParam(BAG), idle=beam.DoFn.TimerParam(IDLE)):
        count = len(list(bag.read()))
        bag.clear()
        if self.clear:
            idle.clear()
        yield key, count

    @on_timer(IDLE)
    def on_idle(self, bag=beam.DoFn.StateParam(BAG)):
        bag.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clear", action="store_true", help="clear the idle timer when the bag is flushed")
    known, beam_args = parser.parse_known_args()
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        _ = (pipeline | beam.Create([(f"k{i % 3}", i) for i in range(30)]) | beam.ParDo(Buffer(known.clear)))
    print(f"finished in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
