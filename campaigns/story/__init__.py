"""The shop's story (``sluice demo``, after the gateway's showcase): CAMPAIGNS.md's story of a shop,
told against a real ``sluice serve`` hosting both layers, over HTTP only.

- ``context``: ``Story`` (what every chapter gets) and ``StoryError``;
- ``runner``: starts the children, tells ``runner.CHAPTERS`` in order, stops everything;
- one module per chapter, each with ``async def chapter(story: Story) -> None``."""
