"""One screen with the state of the whole pipeline (`--json` for scripts)."""

import json

from django.core.management.base import BaseCommand

from aiworker import pipeline


class Command(BaseCommand):
    help = "Outbox backlog and lag, queue depth, reviews by status, dead letters, LLM usage, heartbeats."

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="Machine-readable output."
        )

    def handle(self, *args, as_json: bool, **options):
        snap = pipeline.snapshot()
        if as_json:
            self.stdout.write(json.dumps(snap, indent=2, default=str))
            return
        out = self.stdout.write
        o, q = snap["outbox"], snap["queue"]
        out("OUTBOX")
        out(f"  unpublished (ready)      {o['unpublished']}")
        out(f"  oldest unpublished age   {o['oldest_unpublished_age_s']:.1f} s")
        out(f"  waiting to retry         {o['waiting_retry']}")
        out(f"  parked                   {o['parked']}")
        out(f"  published last minute    {o['published_last_minute']}")
        out(f"  handed off, unfinished   {o['handed_off_unfinished']}")
        out("QUEUE (django-q2)")
        out(f"  depth (waiting)          {q['depth']}")
        out(f"  taken by workers         {q['taken']}")
        out(f"  oldest waiting task      {q['oldest_ready_age_s']:.1f} s")
        out(f"  running clusters         {snap['clusters']}")
        out("REVIEWS  " + "  ".join(f"{k}={v}" for k, v in snap["reviews"].items()))
        out(f"DEAD LETTERS (open)        {snap['dead_letters_open']}")
        b = snap["breaker"]
        out(
            f"BREAKER                    {b['state']}"
            + (f" until {b['open_until']}: {b['reason']}" if b["open_until"] else "")
        )
        out("BUDGET (used / limit)")
        for key, used in snap["budget"]["usage"].items():
            limit = snap["budget"]["limits"][key]
            out(f"  {key:<24} {used:g} / {'unlimited' if limit is None else f'{limit:g}'}")
        out(f"LAG, last {int(pipeline.WINDOW.total_seconds() // 60)} min (p50 / p99 s, n)")
        for name, q in snap["lag"].items():
            out(f"  {name:<24} {q['p50_s']} / {q['p99_s']}  ({q['n']})")
        a = snap["autoscale"]
        out(
            f"WORKERS                    suggested {a['suggested_workers']} (configured {a['configured_workers']}; "
            f"backlog {a['backlog_reviews']}, {a['arrivals_per_s']}/s arriving, {a['per_worker_reviews_per_s']}/s per worker)"
        )
        out(f"PROVIDER CALLS IN FLIGHT   {snap['calls_in_flight']}")
        out("LLM CALLS")
        for c in snap["llm_calls"]:
            out(
                f"  {c['model']:<20} {c['status']:<13} {c['n']:>7} calls  {c['prompt_tokens'] or 0:>9} in  {c['completion_tokens'] or 0:>9} out  ${c['cost']:.4f}"
            )
        out("HEARTBEATS (seconds ago)")
        for name, age in snap["heartbeats"].items():
            out(f"  {name:<40} {age}")
