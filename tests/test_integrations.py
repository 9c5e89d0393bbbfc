"""The LangChain and LlamaIndex retrievers, against the frameworks' real packages, on a store of real embeddings:
known queries of the generated corpus find their documents, with vectormill's metadata."""

from __future__ import annotations

import subprocess
import sys

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from .corpus import TOPICS
from .topic_store import PLACES, write_topic_store

# A question per topic, worded apart from its stored sentence.
QUESTIONS = {
    "volcanoes": "What kind of lava comes out of shield volcanoes?",
    "baking": "How do I proof sourdough bread?",
    "chess": "How does the Sicilian defence answer the king's pawn?",
    "sailing": "When should I reef the mainsail?",
    "taxes": "When are quarterly VAT returns due?",
    "astronomy": "How big is the great red spot on Jupiter?",
}


OPENED: dict = {}  # the store the standard tests' retrievers read (their constructor parameters are properties)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    yield write_topic_store(tmp_path_factory.mktemp("frameworks"))
    if "store" in OPENED:
        OPENED.pop("store").close()


def test_a_langchain_retrieval_chain_hands_the_right_document_to_its_prompt(config):
    from langchain_core.documents import Document
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from vectormill.integrations.langchain import VectormillRetriever

    retriever = VectormillRetriever.from_config(config, k=2)
    prompt = ChatPromptTemplate.from_template("Answer from the context.\nContext:\n{context}\nQuestion: {question}")

    def format_documents(documents: list[Document]) -> str:
        return "\n".join(f"[{d.metadata['document']} p.{d.metadata['pages']}] {d.page_content}" for d in documents)

    # RetrievalQA's shape with the LLM left out: what the model would be asked.
    chain = {"context": retriever | RunnableLambda(format_documents), "question": RunnablePassthrough()} | prompt
    for topic, question in QUESTIONS.items():
        text = chain.invoke(question).to_string()
        assert f"[{PLACES[topic][1]} p.[2]] {TOPICS[topic]}" in text.splitlines()[2], (topic, text)
    documents = retriever.invoke(QUESTIONS["chess"])
    assert isinstance(documents[0], Document) and documents[0].id == documents[0].metadata["chunk_id"]
    assert documents[0].metadata | {"score": 0, "vector_rank": 1} == {
        "document": "reports/chess.pdf", "source": "docs", "page": 2, "pages": [2], "score": 0, "title": "Chess",
        "location": "https://example.org/reports/chess.pdf", "chunk_id": documents[0].id, "modified": "2026-02-01",
        "ocr": False, "vector_rank": 1, "keyword_rank": documents[0].metadata["keyword_rank"]}
    by_keyword = VectormillRetriever.from_config(config, k=1, mode="keyword")
    assert by_keyword.invoke("Sicilian")[0].metadata["document"] == "reports/chess.pdf"
    assert "keyword_rank" not in by_keyword.invoke("Sicilian", mode="vector")[0].metadata  # runtime mode
    wiki_only = VectormillRetriever.from_config(config, k=3, filter={"source": "wiki"})
    assert {d.metadata["source"] for d in wiki_only.invoke(QUESTIONS["chess"])} == {"wiki"}


def test_a_langchain_call_sets_k_and_narrows_the_retrievers_filter(config):
    from vectormill.integrations.langchain import VectormillRetriever

    retriever = VectormillRetriever.from_config(config, k=4)
    assert len(retriever.invoke(QUESTIONS["chess"], k=1)) == 1 and len(retriever.invoke(QUESTIONS["chess"], k=7)) == 7
    wiki = retriever.invoke(QUESTIONS["chess"], k=9, filter={"source": "wiki"})
    assert len(wiki) == 9 and {d.metadata["source"] for d in wiki} == {"wiki"}  # 3 documents of 3 chunks
    science = VectormillRetriever.from_config(config, k=9, filter={"document_prefix": "Science/"})
    assert {d.metadata["document"] for d in science.invoke(QUESTIONS["chess"], filter={"source": "wiki"})} == {
        "Science/Volcanoes", "Science/Astronomy"}
    assert science.invoke(QUESTIONS["chess"], filter={"source": "docs"}) == []  # a call never widens the filter
    with pytest.raises(ValueError, match="unknown filter key"):
        retriever.invoke(QUESTIONS["chess"], filter={"sources": "wiki"})
    with pytest.raises(TypeError):
        retriever.invoke(QUESTIONS["chess"], top_k=2)  # a keyword it does not take is an error, not ignored


class TestVectormillRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's own standard tests of a retriever (langchain-tests), on the topic store."""

    @pytest.fixture(autouse=True)
    def _opened(self, config):
        import vectormill

        if "store" not in OPENED:
            OPENED["store"] = vectormill.open_store(config)

    @property
    def retriever_constructor(self):
        from vectormill.integrations.langchain import VectormillRetriever

        return VectormillRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"store": OPENED["store"]}

    @property
    def retriever_query_example(self) -> str:
        return QUESTIONS["sailing"]


def test_the_langchain_vector_store_read_side(config):
    from vectormill.integrations.langchain import VectormillVectorStore

    store = VectormillVectorStore.from_config(config)
    scored = store.similarity_search_with_score(QUESTIONS["taxes"], k=3)
    assert scored[0][0].metadata["document"] == "reports/taxes.pdf"
    assert [score for _, score in scored] == sorted((score for _, score in scored), reverse=True)
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"document_prefix": "Science/"}})
    documents = retriever.invoke(QUESTIONS["astronomy"])
    assert documents[0].metadata["document"] == "Science/Astronomy"
    assert {d.metadata["document"][:8] for d in documents} == {"Science/"}
    relevance = store.similarity_search_with_relevance_scores(QUESTIONS["baking"], k=1)
    assert relevance[0][0].metadata["document"] == "recipes/baking.pdf" and 0 <= relevance[0][1] <= 1
    with pytest.raises(NotImplementedError, match="ingestion"):
        store.add_texts(["a text"])


def test_a_llamaindex_query_engine_over_the_retriever_finds_the_right_document(config):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText
    from llama_index.core.schema import NodeWithScore, TextNode

    from vectormill.integrations.llamaindex import VectormillRetriever

    retriever = VectormillRetriever.from_config(config, k=2)
    # No LLM: the engine retrieves and hands the nodes over without writing an answer.
    # (NoText given its LLM: get_response_synthesizer(response_mode="no_text") drops it and asks Settings for OpenAI.)
    engine = RetrieverQueryEngine(retriever, NoText(llm=MockLLM()))
    for topic, question in QUESTIONS.items():
        response = engine.query(question)
        best = response.source_nodes[0]
        assert isinstance(best, NodeWithScore) and isinstance(best.node, TextNode)
        assert (best.node.metadata["document"], best.node.get_content()) == (PLACES[topic][1], TOPICS[topic])
    nodes = VectormillRetriever.from_config(config, k=4, filter={"modified_after": "2026-01-01"}).retrieve(
        QUESTIONS["volcanoes"])
    assert {node.node.metadata["document"] for node in nodes} <= {"recipes/baking.pdf", "reports/chess.pdf",
                                                                 "Sport/Sailing"}
    assert nodes[0].score == nodes[0].node.metadata["score"]
    retriever.mode = "keyword"
    assert retriever.retrieve("Jupiter")[0].node.metadata["document"] == "Science/Astronomy"


def test_a_llamaindex_query_engine_shows_the_llm_the_text_and_document_but_no_score_id_or_path(config):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    from vectormill.integrations.llamaindex import VectormillRetriever

    # MockLLM answers with the prompt it was given: what a real LLM would have read.
    engine = RetrieverQueryEngine.from_args(VectormillRetriever.from_config(config, k=2), llm=MockLLM())
    response = engine.query(QUESTIONS["taxes"])
    prompt = str(response)
    best = response.source_nodes[0].node
    assert TOPICS["taxes"] in prompt and "document: reports/taxes.pdf" in prompt and "title: Taxes" in prompt
    assert best.metadata["location"] == "https://example.org/reports/taxes.pdf"  # kept for the caller
    for hidden in ("score", "chunk_id", "location", best.metadata["chunk_id"], best.metadata["location"]):
        assert hidden not in prompt, hidden


def test_the_command_line_never_loads_the_frameworks():
    code = ("import sys\nfrom vectormill.cli import main\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'llama_index')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
